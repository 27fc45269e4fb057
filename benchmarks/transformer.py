"""The shipped digits ViT and squeeze-excitation CNN through the compiler: accuracy and SynOps
against the level count and fire function, and sim.cpu's speed against onnxruntime.

    .venv/bin/python benchmarks/transformer.py [--quick] [--rounds 7] [--runs 3]
        [--nets vit,se] [--skip-sweep] [--skip-speed]

The networks are `toolchain.examples.DIGITS_VIT` (2×2 patches, class token, 2 pre-LayerNorm
blocks of 4 heads, GELU MLP) and `toolchain.examples.DIGITS_SE` (a MobileNetV3-style CNN with a
squeeze-excitation gate), on the digits split `load_digits_split(0)`: calibration on the first
512 training images, accuracy on the 360 test images. Three kinds of table, printed as markdown:

1. **Level sweep**, one per network: for every level count (`--levels`, default 3, 7, 15, 31,
   63, 255 for the ViT and `--se-levels`, default 7, 15, 63, for the SE CNN) and fire function
   (uniform, adaptive: it fits the levels of the ReLU and Clip neurons and of the neurons that
   requantize currents — softmax weights, LayerNorm outputs, attention's operands), with the
   default 63 internal levels (the operands of products, the requantized currents and the
   function tables), and the ViT again at levels 15 (`--internal-rows`) with 3, 7, 15, 31,
   127 and 255 internal levels (`--extra-internal`): top-1 accuracy of sim.cpu's output on the test split next to the
   float model's (onnxruntime), SynOps per inference split into synapse SynOps
   (dense, conv, pooling and add synapses) and product SynOps (the nonzero products of `product`
   and `matmul` nodes, which the simulators count as SynOps), the product outputs (the
   elements of the product and matmul nodes' outputs) and the product neurons (the products they
   form: one per output of a product, M·N·K of a matrix product; product SynOps ÷ terms is the
   share of products with both operands nonzero). A compile that fails prints its row with
   the error's first line.
2. **Speed**: sim.cpu on the network compiled with the default options (outputs only,
   `count=False`, and with the activity statistics, `count=True`) against onnxruntime on the
   float ONNX model (`intra_op_num_threads` = sim.cpu's `threads`), batch 256 (the test split
   tiled) and 16, one and two threads.

How it times (as benchmarks/cpu_sim.py): the machine is shared and its speed drifts, so the rows
are timed in `--rounds` interleaved rounds of `--runs` runs each (after a warm-up call), a time
is the median over rounds of the block medians, and a ratio is the median over rounds of the
two rows' block medians (quartiles in brackets). Wall time; the one-thread rows also give the
ratio of process CPU time. `--quick`: the ViT at levels 7, 15 and 63 (internal 3, 15 and 255 at
15 only), the SE CNN at 15, 3 rounds.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim  # noqa: E402,F401  (before numpy and torch: BLAS kernels, OpenMP wait policy)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import sim.cpu  # noqa: E402
from cpu_sim import fmt, ratio, timed_rounds  # noqa: E402
from toolchain import examples  # noqa: E402
from toolchain.compiler import DEFAULT_INTERNAL_LEVELS, compile_onnx  # noqa: E402

NETS = {"vit": ("digits ViT", examples.DIGITS_VIT), "se": ("digits SE CNN", examples.DIGITS_SE)}
PRODUCT_KINDS = ("product", "matmul")
FIRES = ("uniform", "adaptive")
CALIB = 512


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def float_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    s = session(path)
    return float((s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1) == y).mean())


def synops(art, res) -> tuple[float, float]:
    """(synapse SynOps, product SynOps) per inference: the simulator's per-node `synops`
    (nonzero input × fan-out; for products and matrix products the nonzero products), summed as
    toolchain.energy does (index maps carry none), divided by the samples."""
    syn = prod = 0
    for node in art.nodes:
        if node.role in ("index", "edge"):
            continue
        ops = res.stats[node.name].synops
        if node.kind in PRODUCT_KINDS:
            prod += ops
        else:
            syn += ops
    n = max(res.samples, 1)
    return syn / n, prod / n


def product_neurons(art) -> tuple[int, int]:
    """(outputs, terms) of the product and matmul nodes: the elements of their outputs, and the
    products they form per inference (`macs`: one per output of a product, M·N·K of a matrix
    product), the bound product SynOps reach when no operand is zero."""
    nodes = [n for n in art.nodes if n.kind in PRODUCT_KINDS]
    return sum(math.prod(n.shape) for n in nodes), sum(n.macs() for n in nodes)


def first_line(exc: BaseException, path: Path) -> str:
    text = str(exc).strip().replace(str(path), path.name).splitlines()
    msg = f"{type(exc).__name__}: {text[0] if text else ''}"
    return msg.replace("|", "\\|")[:300]


def sweep_table(key: str, rows: list[tuple[int, int]], data) -> None:
    label, path = NETS[key]
    x_train, _, x_test, y_test = data
    ref = float_accuracy(path, x_test, y_test)
    print(f"\n### {label}: accuracy and SynOps against levels and fire function\n")
    print(f"Calibrated on {CALIB} training images; top-1 on the {len(x_test)} test images. "
          "SynOps per inference.\n")
    print("| levels | internal levels | fire | top-1 sim.cpu | top-1 float | Δ points | "
          "SynOps | synapse SynOps | product SynOps | product share | product neurons | "
          "product terms | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for levels, internal in rows:
        for fire in FIRES:
            head = f"| {levels} | {internal} | {fire} |"
            start = time.perf_counter()
            try:
                art = compile_onnx(path, calib=x_train[:CALIB], levels=levels, fire=fire,
                                   internal_levels=internal).artifact
                seconds = time.perf_counter() - start
                res = sim.cpu.run(art, x_test)
            except Exception as exc:  # a refusal or a failure: the row says which
                print(f"{head} failed: {first_line(exc, path)} | {100 * ref:.2f} | | | | | | | | "
                      f"{time.perf_counter() - start:.1f} |", flush=True)
                continue
            acc = float((res.output.argmax(1) == y_test).mean())
            syn, prod = synops(art, res)
            total = syn + prod
            share = f"{100 * prod / total:.1f}%" if total else "—"
            outputs, terms = product_neurons(art)
            print(f"{head} {100 * acc:.2f} | {100 * ref:.2f} | {100 * (acc - ref):+.2f} | "
                  f"{total:,.0f} | {syn:,.0f} | {prod:,.0f} | {share} | {outputs:,} | "
                  f"{terms:,} | {seconds:.1f} |", flush=True)


def speed_table(keys: list[str], args, data) -> None:
    x_train, _, x_test, _ = data
    print("\n### sim.cpu against onnxruntime (float model)\n")
    print("Default compile options. sim.cpu outputs only (`count=False`) and with the activity "
          "statistics (`count=True`); ratios are sim.cpu ÷ ORT, median [quartiles] over "
          f"{args.rounds} interleaved rounds of {args.runs} runs.\n")
    print("| network | batch | threads | engine | sim.cpu ms | ORT ms | sim.cpu ÷ ORT | "
          "counting ms | counting ÷ ORT | CPU time sim.cpu ÷ ORT |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        label, path = NETS[key]
        art = compile_onnx(path, calib=x_train[:CALIB]).artifact
        for batch in _ints(args.batches):
            x = np.ascontiguousarray(
                np.tile(x_test, (math.ceil(batch / len(x_test)), 1, 1, 1))[:batch])
            for threads in _ints(args.threads):
                s = session(path, threads)
                name = s.get_inputs()[0].name
                cases = {
                    "sim": lambda t=threads, x=x: sim.cpu.run(art, x, count=False, threads=t),
                    "count": lambda t=threads, x=x: sim.cpu.run(art, x, threads=t),
                    "ort": lambda s=s, x=x, name=name: s.run(None, {name: x}),
                }
                got = timed_rounds(cases, args.rounds, args.runs)
                ms = {k: 1000 * statistics.median(v[0]) for k, v in got.items()}
                cpu = fmt(ratio(got["sim"][1], got["ort"][1])) if threads == 1 else "—"
                engine = sim.cpu.engine_for(art, x, count=False)
                print(f"| {label} | {batch} | {threads} | {engine} | {ms['sim']:.2f} | "
                      f"{ms['ort']:.2f} | "
                      f"{fmt(ratio(got['sim'][0], got['ort'][0]))} | {ms['count']:.2f} | "
                      f"{fmt(ratio(got['count'][0], got['ort'][0]))} | {cpu} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default="vit,se")
    ap.add_argument("--levels", default="3,7,15,31,63,255", help="the ViT's level counts")
    ap.add_argument("--se-levels", default="7,15,63", help="the SE CNN's level counts")
    ap.add_argument("--internal-rows", default="15",
                    help="ViT level counts compiled again with each of --extra-internal")
    ap.add_argument("--extra-internal", default="3,7,15,31,127,255",
                    help="internal level counts of those extra ViT rows")
    ap.add_argument("--batches", default="256,16")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row and round")
    ap.add_argument("--quick", action="store_true",
                    help="ViT levels 7,15,63 (internal 3, 15, 255 at 15), SE CNN levels 15, "
                    "3 rounds")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.levels, args.se_levels, args.rounds = "7,15,63", "15", 3
        args.internal_rows, args.extra_internal = "15", "3,15,255"
    keys = args.nets.split(",")
    load_before = os.getloadavg()
    print(f"command: {shlex.join([Path(sys.executable).name] + sys.argv)}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs; load average "
          f"at start {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}")
    data = examples.load_digits_split(0)
    if not args.skip_sweep:
        for key in keys:
            levels = _ints(args.levels if key == "vit" else args.se_levels)
            rows = [(L, DEFAULT_INTERNAL_LEVELS) for L in levels]
            if key == "vit":
                rows += [(L, i) for i in _ints(args.extra_internal)
                         for L in _ints(args.internal_rows)]
            sweep_table(key, rows, data)
    if not args.skip_speed:
        speed_table(keys, args, data)
    import torch
    load_after = os.getloadavg()
    print(f"\nsim.cpu: torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; onnxruntime {ort.__version__}; "
          f"numpy {np.__version__}")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
