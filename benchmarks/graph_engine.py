"""sim.cpu's two engines against each other and against onnxruntime's float model, by batch size.

    .venv/bin/python benchmarks/graph_engine.py [--nets digits,mlp,resnet18_q,vit,se]
        [--batches 1,4,16,32,64,128] [--rounds 5] [--runs 3] [--count] [--cache DIR]

For every network and batch: sim.cpu (`count=False`, or counting the activity with `--count`;
one thread) on the graph engine (the T = 1
pass as one onnxruntime call, sim/cpu/graph.py) and on the program (sim/cpu/program.py), and
onnxruntime on the float model, timed in interleaved rounds (benchmarks/cpu_sim.py's
`timed_rounds`); ratios are medians over rounds [quartiles]. The last column is the engine the
default (`engine=None`) picks for that batch. Networks: benchmarks/speed_nets.py's digits CNN,
MLP and ResNet-18 ×¼, and the shipped digits ViT and SE CNN (compiled with default options).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim  # noqa: E402,F401  (before numpy and torch: BLAS kernels, OpenMP wait policy)

import numpy as np  # noqa: E402

import speed_nets as nets  # noqa: E402
import sim.cpu  # noqa: E402
from cpu_sim import _session, fmt, ratio, timed_rounds  # noqa: E402
from toolchain import examples  # noqa: E402
from toolchain.compiler import compile_onnx  # noqa: E402

SHIPPED = {"vit": ("digits ViT", examples.DIGITS_VIT), "se": ("digits SE CNN", examples.DIGITS_SE)}


def network(name: str, folder: Path):
    """(label, artifact, float ONNX path, inputs(batch)) of a network."""
    if name in SHIPPED:
        label, path = SHIPPED[name]
        x_train, _, x_test, _ = examples.load_digits_split()
        art = compile_onnx(path, calib=x_train[:512]).artifact
        pool = np.concatenate([x_test] * 2).astype(np.float32)
        return label, art, path, lambda b: np.ascontiguousarray(pool[:b])
    return nets.NETS[name], nets.artifact(name, folder), nets.onnx_path(name, folder), \
        lambda b: nets.inputs(name, b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default="digits,mlp,resnet18_q,vit,se")
    ap.add_argument("--batches", default="1,4,16,32,64,128")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", action="store_true",
                    help="time counted runs (count=True: the activity statistics) on both engines")
    ap.add_argument("--cache", default=None, help="folder for the exported and compiled models")
    args = ap.parse_args()
    folder = Path(args.cache or tempfile.mkdtemp(prefix="sfn_graph_bench_"))
    folder.mkdir(parents=True, exist_ok=True)
    count = args.count
    print(f"count={count}\n")
    print("| network | batch | graph ms | program ms | ORT float ms | graph ÷ program | "
          "graph ÷ ORT float | program ÷ ORT float | default |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.nets.split(","):
        label, art, path, inputs = network(name, folder)
        for batch in [int(b) for b in args.batches.split(",")]:
            x = inputs(batch)
            s = _session(path, 1)
            feed = {s.get_inputs()[0].name: x}
            cases = {
                "graph": lambda x=x: sim.cpu.run(art, x, count=count, threads=1, engine="graph"),
                "program": lambda x=x: sim.cpu.run(art, x, count=count, threads=1,
                                                   engine="program"),
                "ort": lambda s=s, feed=feed: s.run(None, feed),
            }
            got = timed_rounds(cases, args.rounds, args.runs)
            ms = {k: 1000 * statistics.median(v[0]) for k, v in got.items()}
            print(f"| {label} | {batch} | {ms['graph']:.3f} | {ms['program']:.3f} | "
                  f"{ms['ort']:.3f} | {fmt(ratio(got['graph'][0], got['program'][0]))} | "
                  f"{fmt(ratio(got['graph'][0], got['ort'][0]))} | "
                  f"{fmt(ratio(got['program'][0], got['ort'][0]))} | "
                  f"{sim.cpu.engine_for(art, x, count=count)} |", flush=True)


if __name__ == "__main__":
    main()
