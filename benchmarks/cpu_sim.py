"""sim.cpu throughput against onnxruntime running the float model, same batch, same run.

    .venv/bin/python benchmarks/cpu_sim.py [--batch 256] [--repeats 30]

Prints samples/s for: onnxruntime (float ONNX), sim.cpu (outputs only), sim.cpu (with spike,
SynOps and saturation counting), and the ratios. Target: sim.cpu no more than 2× slower than
onnxruntime on the digits CNN.

sim.cpu's convolutions are numpy matrix products, so its speed depends on the BLAS kernel numpy's
OpenBLAS picks; the table says which one ran. On CPUs this OpenBLAS build does not recognize it
falls back to a slow SSE3 kernel ("Prescott"); `OPENBLAS_CORETYPE=Haswell` selects the AVX2 one:

    OPENBLAS_CORETYPE=Haswell .venv/bin/python benchmarks/cpu_sim.py
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import sim.cpu  # noqa: E402
from timing import median_seconds  # noqa: E402
from exporters.digits import load_digits_split  # noqa: E402
from toolchain.compiler import compile_onnx  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "digits_cnn_relu.onnx"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    args = ap.parse_args()
    x_train, _, x_test, _ = load_digits_split()
    x = np.concatenate([x_test] * (args.batch // len(x_test) + 1))[: args.batch]
    art = compile_onnx(MODEL, calib=x_train).artifact
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(str(MODEL), opts, providers=["CPUExecutionProvider"])
    rows = [("onnxruntime, float model", median_seconds(lambda: sess.run(None, {"input": x}),
                                                        args.repeats)),
            ("sim.cpu, outputs only", median_seconds(
                lambda: sim.cpu.run(art, x, count=False), args.repeats)),
            ("sim.cpu, with spike/SynOps counts", median_seconds(
                lambda: sim.cpu.run(art, x, count=True), args.repeats))]
    base = rows[0][1]
    t = Table(title=f"digits CNN, batch {args.batch}, median of {args.repeats} runs")
    for c in ("runtime", "ms / batch", "samples/s", "time vs onnxruntime"):
        t.add_column(c)
    for name, s in rows:
        t.add_row(name, f"{1000 * s:.2f}", f"{args.batch / s:,.0f}", f"{s / base:.2f}×")
    Console(width=120).print(t)
    from threadpoolctl import threadpool_info
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    print("numpy BLAS: " + ", ".join(f"{i.get('internal_api')} {i.get('version')} kernel "
                                      f"{i.get('architecture')}, {i.get('num_threads')} threads"
                                      for i in blas))


if __name__ == "__main__":
    main()
