"""sim.cpu throughput against onnxruntime running the float model, same batch, same run.

    .venv/bin/python benchmarks/cpu_sim.py [--batch 256] [--repeats 60] [--rounds 12]
                                           [--threads 2] [--sim-threads 1,2]

Prints samples/s for: onnxruntime (float ONNX) with --threads intra-op threads and with one,
sim.cpu (outputs only, one row per --sim-threads value; with spike, SynOps and saturation
counting; and its numpy-only fallback), and each one's time against both onnxruntime rows.
The last lines give sim.cpu's time against onnxruntime's at equal thread counts.

sim.cpu's convolutions and matrix products run on float32 copies of the integers (exact: every
partial sum is bounded below 2²⁴) through torch's oneDNN/MKL kernels when torch is there, else
numpy's BLAS; convolutions whose input is a non-negative payload ≤ 255 run as oneDNN's u8·s8
int8 convolution where a probe shows it exact. The lines under the table say which ran, with how
many threads, and the load average. This machine is shared and its speed drifts from second to
second: the rows are timed in short interleaved rounds and every ratio is the median over rounds
of two rows timed seconds apart (quartiles given); compare rows of one run, not runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sim  # noqa: E402,F401  (before numpy: its BLAS kernels, see sim/__init__.py)

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

import sim.cpu  # noqa: E402
from sim.cpu import runner, torch_ops  # noqa: E402
from exporters.digits import load_digits_split  # noqa: E402
from timing import run_seconds  # noqa: E402
from toolchain.compiler import compile_onnx  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "toolchain" / "data" / "digits_cnn_relu.onnx"


def _ort(threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(MODEL), opts, providers=["CPUExecutionProvider"])


def _numpy_only(art, x):
    runner.USE_TORCH = False
    try:
        return sim.cpu.run(art, x, count=False)
    finally:
        runner.USE_TORCH = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=60, help="timed runs per row, over all rounds")
    ap.add_argument("--rounds", type=int, default=12,
                    help="interleaved rounds (every row once per round)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--sim-threads", default="1,2",
                    help="sim.cpu's torch threads, one row each (sim.cpu.run(threads=...); its "
                         "default is torch's own setting, every core)")
    args = ap.parse_args()
    x_train, _, x_test, _ = load_digits_split()
    x = np.concatenate([x_test] * (args.batch // len(x_test) + 1))[: args.batch]
    art = compile_onnx(MODEL, calib=x_train).artifact
    load_before = os.getloadavg()
    ort_runs = [(args.threads, _ort(args.threads))]
    if args.threads != 1:
        ort_runs.append((1, _ort(1)))
    sim_threads = [int(t) for t in str(args.sim_threads).split(",")]
    cases = [("onnxruntime, float model", threads,
              lambda sess=sess: sess.run(None, {"input": x}), args.repeats)
             for threads, sess in ort_runs]
    for st in sim_threads:
        cases.append(("sim.cpu, outputs only", st,
                      lambda st=st: sim.cpu.run(art, x, count=False, threads=st), args.repeats))
    cases += [("sim.cpu, with spike/SynOps counts", sim_threads[0],
               lambda: sim.cpu.run(art, x, count=True, threads=sim_threads[0]), args.repeats),
              ("sim.cpu, numpy only (no torch), outputs only", "BLAS",
               lambda: _numpy_only(art, x), max(3, args.repeats // 3))]
    # The machine's speed drifts from second to second (a shared host): every row is timed in
    # `rounds` short blocks taken in turn, a pause after each block letting worker threads stop
    # spinning. A row's time is its median over all runs; a ratio is the median over rounds of
    # the two rows' block medians — both timed seconds apart, under the same conditions.
    def per_round(repeats):
        return max(2, -(-repeats // args.rounds))

    blocks: list[list[float]] = [[] for _ in cases]
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(args.rounds):
        for (_, _, fn, repeats), got, med in zip(cases, samples, blocks):
            times = run_seconds(fn, per_round(repeats))
            got += times
            med.append(statistics.median(times))
            time.sleep(0.25)
    rows = [(name, threads, statistics.median(got), med)
            for (name, threads, _, _), got, med in zip(cases, samples, blocks)]
    load_after = os.getloadavg()
    base = {threads: rows[i][3] for i, (threads, _) in enumerate(ort_runs)}

    def ratio(med, against):
        r = sorted(a / b for a, b in zip(med, against))
        return statistics.median(r), r[len(r) // 4], r[(3 * len(r)) // 4]

    t = Table(title=f"digits CNN, batch {args.batch}, {args.rounds} interleaved rounds of "
                    f"{per_round(args.repeats)} runs per row (numpy only: fewer)")
    for c in ("runtime", "threads", "ms / batch", "samples/s",
              *(f"time vs onnxruntime ({k} thr)" for k in base)):
        t.add_column(c)
    for name, threads, s, med in rows:
        t.add_row(name, str(threads), f"{1000 * s:.2f}", f"{args.batch / s:,.0f}",
                  *(f"{ratio(med, b)[0]:.2f}×" for b in base.values()))
    Console(width=140).print(t)
    same = [(st, ratio(med, base[st])) for name, st, _, med in rows
            if name == "sim.cpu, outputs only" and st in base]
    if same:
        print("target ≤ 2.00× at equal threads (sim.cpu outputs only / onnxruntime, median "
              "over rounds [quartiles]): " +
              ", ".join(f"{st} thread{'s' if st > 1 else ''} {r:.2f}× [{lo:.2f}–{hi:.2f}]"
                        for st, (r, lo, hi) in same))
    if torch_ops.available():
        import torch
        print(f"sim.cpu products: torch {torch.__version__} (conv: oneDNN "
              f"{'on' if torch.backends.mkldnn.is_available() else 'OFF'}, matmul: "
              f"{'MKL' if torch.backends.mkl.is_available() else 'BLAS'}; int8 convolutions: "
              f"{'on' if torch_ops._int8_exact(torch) else 'off'}), "
              f"{'/'.join(map(str, sim_threads))} thread(s) during the runs (torch's own "
              f"setting: {torch.get_num_threads()})")
    else:
        print("sim.cpu products: numpy BLAS (torch not importable)")
    from threadpoolctl import threadpool_info
    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    print("numpy BLAS: " + ", ".join(f"{i.get('internal_api')} {i.get('version')} kernel "
                                      f"{i.get('architecture')}, {i.get('num_threads')} threads"
                                      for i in blas if "numpy" in i.get("filepath", "")))
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
