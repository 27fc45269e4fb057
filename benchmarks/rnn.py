"""Trials per second of a deployed E/I RNN on sim.cpu next to the float torch network, same run.

    .venv/bin/python benchmarks/rnn.py [--units 100] [--repeats 3] [--lava]

CDDM-sized network (6 inputs, 2 outputs, T = 300, the task's full condition batch); speed does not
depend on training, so the network is freshly initialized (Dale's law, ReLU). Prints medians.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sim  # noqa: E402,F401  (before numpy: its BLAS kernels, see sim/__init__.py)

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sim.cpu  # noqa: E402
from timing import median_seconds  # noqa: E402
from exporters.rnn.export import export_rnn_onnx  # noqa: E402
from toolchain.rnn import run_onnx_trials  # noqa: E402
from exporters.rnn.model import EIRNN  # noqa: E402
from toolchain.tasks import make_task  # noqa: E402
from toolchain.compiler import compile_onnx  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--activation", default="relu")
    ap.add_argument("--lava", action="store_true", help="also time sim.lava (fixed_pt)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    task = make_task("cddm")
    x = task.inputs
    model = EIRNN(6, 2, n_units=args.units, activation=args.activation, dale=True).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_rnn_onnx(model, Path(tmp) / "cell.onnx", task=task)
        art = compile_onnx(path, calib=x).artifact
        ux = torch.from_numpy(x)

        def torch_float():
            with torch.no_grad():
                model(ux, noise=False)

        rows = [("torch, float network", median_seconds(torch_float, args.repeats)),
                ("onnxruntime, float cell stepped", median_seconds(lambda: run_onnx_trials(path, x),
                                                                   args.repeats)),
                ("sim.cpu, deployed", median_seconds(lambda: sim.cpu.run(art, x, count=False),
                                                     args.repeats))]
        if args.lava:
            from sim import lava as sim_lava
            rows.append(("sim.lava fixed_pt, deployed",
                         median_seconds(lambda: sim_lava.run(art, x), args.repeats)))
    base = rows[0][1]
    t = Table(title=f"CDDM-sized E/I RNN: {args.units} units, {len(x)} trials × {x.shape[1]} "
                    f"steps, median of {args.repeats}")
    for c in ("runtime", "seconds", "trials/s", "time vs torch"):
        t.add_column(c)
    for name, s in rows:
        t.add_row(name, f"{s:.3f}", f"{len(x) / s:,.0f}", f"{s / base:.2f}×")
    Console(width=120).print(t)


if __name__ == "__main__":
    main()
