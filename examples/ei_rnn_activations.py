"""Does deployment keep each E/I RNN's circuit solution? Six variants — {relu, sigmoid, tanh} ×
{Dale's law, none} — trained on a task, exported, compiled to SFN neurons and run on sim.cpu.

    python examples/ei_rnn_activations.py                 # CDDM, 100 units, the trainer's defaults
    python examples/ei_rnn_activations.py --quick         # 32 units, 200 steps: a smoke run
    python examples/ei_rnn_activations.py --models tests/data/rnn   # the shipped small cells

Per variant the table gives masked R² and decision accuracy (float and deployed), the E/I counts
of the deployed weights, the fixed points reached from rest under a grid of constant inputs (count
in each network, and their distance float → deployed), and trajectory similarity: the share of one
network's trajectory variance (10 PCs) that a linear map from the other's explains — float vs
deployed per variant, and between activations (float networks, same Dale setting). Writes
table.json, table.md and trajectories.png (first two PCs, float solid, deployed dashed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sim.cpu  # noqa: E402
from exporters.rnn.export import export_rnn_onnx  # noqa: E402
from toolchain.rnn import run_onnx_trials  # noqa: E402
from exporters.rnn.model import EIRNN  # noqa: E402
from toolchain.tasks import decision, make_task  # noqa: E402
from exporters.rnn.train import train  # noqa: E402
from toolchain.tasks import masked_r2  # noqa: E402
from toolchain.compiler import compile_onnx  # noqa: E402

VARIANTS = [(a, d) for a in ("relu", "sigmoid", "tanh") for d in (True, False)]


def pcs(states: np.ndarray, k: int = 10) -> np.ndarray:
    """(trials, T, N) → (trials·T, k) projections on the top k principal components."""
    flat = states.reshape(-1, states.shape[-1])
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    return flat @ vt[:k].T


def explained(a: np.ndarray, b: np.ndarray) -> float:
    """1 − ‖b − a·M‖² / ‖b − mean(b)‖² for the least-squares map M (a, b: (samples, k))."""
    a1 = np.hstack([a, np.ones((len(a), 1))])
    m, *_ = np.linalg.lstsq(a1, b, rcond=None)
    resid = ((b - a1 @ m) ** 2).sum()
    return float(1 - resid / max(((b - b.mean(axis=0)) ** 2).sum(), 1e-30))


def end_states(run, inputs: np.ndarray, steps: int) -> np.ndarray:
    """States after `steps` steps of constant input from rest: the fixed points reached."""
    u = np.repeat(inputs[:, None, :], steps, axis=1).astype(np.float32)
    return run(u)[:, -1]


def count_distinct(points: np.ndarray, tol: float) -> int:
    reps: list[np.ndarray] = []
    for p in points:
        if all(np.linalg.norm(p - r) > tol for r in reps):
            reps.append(p)
    return len(reps)


def trained_cell(task, act: str, dale: bool, units: int, steps: int | None, seed: int, out: Path,
                 models: Path | None) -> Path:
    """Train and export one variant, or take it from `models` (a folder of exported cells named
    {task}_{activation}_{dale|nodale}.onnx, e.g. tests/data/rnn from train_rnn_test_models.py)."""
    if models is not None:
        path = models / f"{task.name}_{act}_{'dale' if dale else 'nodale'}.onnx"
        if not path.is_file():
            raise SystemExit(f"{path}: no such model (see --models)")
        return path
    import torch
    torch.set_num_threads(2)
    model = EIRNN(task.n_inputs, task.n_outputs, n_units=units, activation=act, dale=dale,
                  seed=seed)
    train(model, task, steps=steps, seed=seed, progress=False)
    # the names --models reads: the output folder of one run is the --models input of the next
    return export_rnn_onnx(model, out / f"{task.name}_{act}_{'dale' if dale else 'nodale'}.onnx",
                           task=task)


def study(task_name: str, units: int, steps: int | None, seed: int, out: Path,
          models: Path | None = None) -> list[dict]:
    task = make_task(task_name, seed=seed)
    grid = np.unique(task.inputs[:, -1], axis=0)          # constant inputs: each condition's end
    rows, float_pcs = [], {}
    for act, dale in VARIANTS:
        name = f"{act}{'_dale' if dale else ''}"
        path = trained_cell(task, act, dale, units, steps, seed, out, models)
        art = compile_onnx(path, calib=task.inputs).artifact
        s_y = art.record["y/act_scale"]

        def deployed(u, art=art, s_y=s_y):
            return sim.cpu.run(art, u, record=("y",)).recorded["y"] * s_y

        f_out, f_states = run_onnx_trials(path, task.inputs)
        d = sim.cpu.run(art, task.inputs, record=("y",))
        d_out, d_states = d.output, d.recorded["y"] * s_y
        scale = float(np.abs(f_states).max()) or 1.0
        f_fp = end_states(lambda u: run_onnx_trials(path, u)[1], grid, 400)
        d_fp = end_states(deployed, grid, 400)
        rnn = art.meta["rnn"]
        rows.append({
            "variant": name, "float_r2": masked_r2(f_out, task.targets, task.mask),
            "deployed_r2": masked_r2(d_out, task.targets, task.mask),
            "float_accuracy": decision(f_out, task), "deployed_accuracy": decision(d_out, task),
            # E/I counts of the deployed integer weights; unconstrained networks have none
            "excitatory": rnn["n_exc"] if dale else None,
            "inhibitory": rnn["n_units"] - rnn["n_exc"] if dale else None,
            "fixed_points_float": count_distinct(f_fp, 0.05 * scale),
            "fixed_points_deployed": count_distinct(d_fp, 0.05 * scale),
            "fixed_point_distance": float(np.linalg.norm(f_fp - d_fp, axis=1).mean() / scale),
            "similarity_float_deployed": explained(pcs(f_states), pcs(d_states)),
        })
        float_pcs[name] = (pcs(f_states), f_states, d_states)
        print(json.dumps(rows[-1]), flush=True)
    for r in rows:  # between activations, same Dale setting, float networks
        dale = r["variant"].endswith("_dale")
        others = [k for k in float_pcs if k != r["variant"] and k.endswith("_dale") == dale]
        r["similarity_to_other_activations"] = {
            k: explained(float_pcs[k][0], float_pcs[r["variant"]][0]) for k in others}
    figure(float_pcs, task, out / "trajectories.png")
    return rows


def figure(float_pcs: dict, task, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    colors = plt.cm.coolwarm(np.linspace(0, 1, len(task.inputs)))
    for ax, (name, (_, f_states, d_states)) in zip(axes.T.flat, float_pcs.items()):
        flat = f_states.reshape(-1, f_states.shape[-1])
        mean = flat.mean(axis=0)
        _, _, vt = np.linalg.svd(flat - mean, full_matrices=False)
        for i in range(0, len(f_states), max(1, len(f_states) // 24)):
            f = (f_states[i] - mean) @ vt[:2].T
            dd = (d_states[i] - mean) @ vt[:2].T
            ax.plot(f[:, 0], f[:, 1], color=colors[i], lw=1)
            ax.plot(dd[:, 0], dd[:, 1], color=colors[i], lw=1, ls="--")
        ax.set_title(name)
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
    fig.suptitle(f"{task.name}: float (solid) and deployed (dashed) trajectories, float PCs")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def markdown(rows: list[dict]) -> str:
    cols = ["variant", "float_r2", "deployed_r2", "float_accuracy", "deployed_accuracy",
            "excitatory", "inhibitory", "fixed_points_float", "fixed_points_deployed",
            "fixed_point_distance", "similarity_float_deployed"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "n/a" if v is None else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "Between activations (float networks, same Dale setting): share of the row "
                  "network's trajectory variance explained by a linear map from the column's.", ""]
    for r in rows:
        lines.append(f"- {r['variant']}: " + ", ".join(
            f"from {k} {v:.3f}" for k, v in r["similarity_to_other_activations"].items()))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="cddm", choices=["cddm", "go_nogo", "memory_number"])
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--steps", type=int, help="optimizer steps (default: the trainer's per task)")
    ap.add_argument("--quick", action="store_true", help="32 units, 200 steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("examples/out/ei_rnn"))
    ap.add_argument("--models", type=Path, help="deploy and analyse already trained cells from this "
                    "folder ({task}_{activation}_{dale|nodale}.onnx, e.g. tests/data/rnn) "
                    "instead of training")
    args = ap.parse_args(argv)
    if args.quick:
        args.units, args.steps = 32, args.steps or 200
    args.out.mkdir(parents=True, exist_ok=True)
    rows = study(args.task, args.units, args.steps, args.seed, args.out, args.models)
    (args.out / "table.json").write_text(json.dumps(rows, indent=1))
    (args.out / "table.md").write_text(markdown(rows) + "\n")
    print(markdown(rows))
    print(f"wrote {args.out}/table.json, table.md, trajectories.png")
    return rows


if __name__ == "__main__":
    main()
