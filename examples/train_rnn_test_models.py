"""Train the twelve small E/I RNNs the variant test ships: {Go/NoGo, CDDM} × {relu, sigmoid, tanh}
× {Dale's law, none}, exported as one-step ONNX cells.

Writes into tests/data/rnn/:
  {task}_{activation}_{dale|nodale}.onnx   the cell (u, h → o, h_next; sfn.* metadata, task named)
  rnn_models.json                          per model: units, steps, seed, noise, training time,
                                           float R² and decision accuracy (torch, noiseless), the
                                           same for the exported cell under onnxruntime and for
                                           the compiled network on sim.cpu, and the command

Evaluation is `toolchain rnn eval`'s: the task's own trial batch (Go/NoGo: 11 values, T = 60;
CDDM: 450 conditions of the training coherences, T = 300), masked R² and the task's decision rule.
Training follows exporters.rnn.train (masked MSE + rate + input-orthogonality penalties, Adam,
cosine schedule, best validation loss kept) with noise σ = 0.05 on inputs and states, seed 0.

Run:  nice -n 5 .venv/bin/python examples/train_rnn_test_models.py [--only cddm_relu_dale,...]
Entries of models not retrained are kept in the JSON; --measure-only recompiles and re-measures the
shipped cells without training (after a compiler change).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from sim.artifact import atomic_write  # noqa: E402

OUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "rnn"
# per task: units, optimizer steps (batch: the trainer's per-task default)
CONFIGS = {"go_nogo": dict(units=32, steps=400), "cddm": dict(units=40, steps=700)}
# tanh on CDDM: 40 units reach masked R² 0.771 (Dale) / 0.775 (no Dale) after 700 steps, and
# 0.834 / 0.838 after 1400 steps; the no-Dale one then lost 3.1 points of decision accuracy when
# deployed by the quantizer of that time (7-bit joint weights, one scale per unit); 100 units
# were taken, and stay within 0.5 points
OVERRIDES = {"cddm_tanh_dale": dict(units=100, steps=1400),
             "cddm_tanh_nodale": dict(units=100, steps=1400)}
ACTIVATIONS = ("relu", "sigmoid", "tanh")
NOISE = 0.05
SEED = 0


def variant_names():
    return [f"{task}_{act}_{'dale' if dale else 'nodale'}" for task in CONFIGS
            for act in ACTIVATIONS for dale in (True, False)]


def train_one(name: str, out_dir: Path) -> dict:
    """Train model `name` (e.g. cddm_relu_dale), export its cell to out_dir and measure it."""
    import torch

    from exporters.rnn.export import export_rnn_onnx
    from exporters.rnn.model import EIRNN
    from toolchain.tasks import make_task
    from exporters.rnn.train import train

    task_name, act, dale = parse(name)
    cfg = dict(CONFIGS[task_name], **OVERRIDES.get(name, {}))
    torch.manual_seed(SEED)
    task = make_task(task_name, seed=SEED)
    model = EIRNN(task.n_inputs, task.n_outputs, n_units=cfg["units"], activation=act, dale=dale,
                  input_noise=NOISE, rec_noise=NOISE, seed=SEED)
    start = time.perf_counter()
    res = train(model, task, steps=cfg["steps"], seed=SEED, progress=False)
    seconds = time.perf_counter() - start
    path = export_rnn_onnx(model, out_dir / f"{name}.onnx", task=task)
    row = {"file": Path(path).name, "task": task_name, "activation": act, "dale": dale,
           "units": cfg["units"], "steps": cfg["steps"], "seed": SEED, "noise": NOISE,
           "train_seconds": round(seconds, 1), "torch_r2": round(res.r2, 6),
           "torch_accuracy": res.accuracy}
    row.update(measure(Path(path)))
    return row


def parse(name: str) -> tuple[str, str, bool]:
    *task_parts, act, dale = name.split("_")
    return "_".join(task_parts), act, dale == "dale"


def measure(path: Path) -> dict:
    """`toolchain rnn eval --onnx` on the compiled cell: float (onnxruntime) and deployed
    (sim.cpu) masked R² and decision accuracy on the task's own trials."""
    from toolchain.tasks import make_task
    from toolchain.rnn.evaluate import evaluate
    from toolchain.compiler import compile_onnx

    art = compile_onnx(path).artifact  # calibrated on the task's trials (named in the metadata)
    task = art.meta["rnn"]["task"]
    row = evaluate(art, task, str(path))
    return {"trials": row["trials"], "trial_steps": int(make_task(task).inputs.shape[1]),
            "float_r2": round(row["float_r2"], 6), "float_accuracy": row["float_accuracy"],
            "deployed_r2": round(row["deployed_r2"], 6),
            "deployed_accuracy": row["deployed_accuracy"],
            "output_rms_difference": round(row["output_rms_difference"], 6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated model names, e.g. cddm_relu_dale")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--measure-only", action="store_true",
                    help="do not train: re-measure the shipped cells (after a compiler change)")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(2)
    names = variant_names()
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            sys.exit(f"unknown models {unknown}; known: {names}")
        names = [n for n in names if n in wanted]
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "rnn_models.json"
    record = json.loads(json_path.read_text()) if json_path.exists() else {}
    record = {k: v for k, v in record.items() if k in variant_names()}
    command = "nice -n 5 .venv/bin/python examples/train_rnn_test_models.py" + (
        f" --only {args.only}" if args.only else "") + (" --measure-only" if args.measure_only
                                                          else "")
    for name in names:
        if args.measure_only:
            row = dict(record[name], **measure(args.out / f"{name}.onnx"))
            row["measured_with"] = command
        else:
            row = train_one(name, args.out)
            row["command"] = command
        record[name] = row
        print(f"{name}: {row['units']} units, {row['steps']} steps, {row['train_seconds']} s — "
              f"float R² {row['float_r2']:.3f} acc {row['float_accuracy']:.3f}, deployed R² "
              f"{row['deployed_r2']:.3f} acc {row['deployed_accuracy']:.3f}", flush=True)
        ordered = {k: record[k] for k in variant_names() if k in record}
        atomic_write(json_path, (json.dumps(ordered, indent=1) + "\n").encode())
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
