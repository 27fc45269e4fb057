"""Compile time and peak memory of a full ResNet-18 against its width.

    .venv/bin/python benchmarks/compile.py [--widths 16 32 64] [--calib 16] [--tracemalloc]

The network is tests/zoo.py's ResNet18 with a CIFAR-style stem (conv 3×3, no pooling) on
1×3×32×32 inputs, stages of width·(1, 2, 4, 8) channels and a 1000-way head: width 64 is the
full ResNet-18 (11.7 M parameters). Weights are PyTorch's default initialization; the BatchNorm
statistics are "sane": measured by running the network in training mode on random inputs (so
every layer's activations are normalized, as in a trained network). It is exported with the
legacy exporter (opset 17) and compiled with `compile_onnx` on 16 random samples — import,
calibration, quantization, mapping onto cores and the agreement run on sim.cpu, all included.

Each width runs in its own fresh subprocess so that its peak memory is its own: the export in
one (torch), the compile in another that never imports torch. Memory is
`resource.getrusage(RUSAGE_SELF).ru_maxrss` of the compiling process — the peak resident set of
the whole process, Python, numpy, onnxruntime and their libraries included; the table also gives
its value just before `compile_onnx` (the baseline of the imports) and, with `--tracemalloc`, the
peak of Python-level allocations (numpy's arrays included) during the compile, in a separate
run because tracing slows it down.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def export(width: int, path: Path, seed: int = 0) -> dict:
    import torch
    torch.set_num_threads(2)
    sys.path.insert(0, str(ROOT / "tests"))
    import zoo
    torch.manual_seed(seed)
    model = zoo.settle_batchnorm(zoo.ResNet18(width=width, in_ch=3, classes=1000, size=32,
                                              stem="cifar"), (3, 32, 32))
    start = time.perf_counter()
    zoo.export(model, path, dynamo=False)
    return {"params": sum(p.numel() for p in model.parameters()),
            "export_s": time.perf_counter() - start, "onnx_mb": path.stat().st_size / 2 ** 20}


def compile_once(path: Path, n_calib: int, trace: bool) -> dict:
    """Compile in this process; time each phase (wrappers around the compiler's steps)."""
    import resource

    import numpy as np

    import sim.cpu
    from toolchain import calibrate as cal
    from toolchain import compiler
    phases: dict[str, float] = {}

    def timed(label, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t
        return wrapper

    compiler.import_onnx = timed("import", compiler.import_onnx)
    cal.calibrate = timed("calibrate", cal.calibrate)
    compiler.Quantizer.run = timed("quantize", compiler.Quantizer.run)
    compiler.place = timed("map", compiler.place)
    sim.cpu.run = timed("sim_agreement", sim.cpu.run)
    calib = np.random.default_rng(0).random((n_calib, 3, 32, 32)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if trace:
        import tracemalloc
        tracemalloc.start()
    start = time.perf_counter()
    compiled = compiler.compile_onnx(path, calib=calib)
    seconds = time.perf_counter() - start
    out = {"compile_s": seconds, "phases": phases, "rss_before_mb": before,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if trace:
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2 ** 20
        tracemalloc.stop()
    placement = compiled.artifact.meta.get("placement", {})
    out["cores"] = placement.get("cores_used")
    out["weights"] = int(sum(n.weight.size for n in compiled.artifact.nodes
                             if n.kind in ("dense", "conv")))
    out["top1_agreement"] = compiled.agreement.get("top1_agreement")
    return out


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__] + args, capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--calib", type=int, default=16)
    ap.add_argument("--tracemalloc", action="store_true",
                    help="also a traced run per width: peak of Python allocations")
    ap.add_argument("--export", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--compile", help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.export is not None:      # child: build and export one width
        print(json.dumps(export(args.export, Path(args.out))))
        return
    if args.compile:                 # child: compile one exported model
        print(json.dumps(compile_once(Path(args.compile), args.calib, args.trace)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.widths:
            path = Path(tmp) / f"resnet18_w{w}.onnx"
            row = {"width": w, **_child(["--export", str(w), "--out", str(path)])}
            row.update(_child(["--compile", str(path), "--calib", str(args.calib)]))
            if args.tracemalloc:
                row["tracemalloc_peak_mb"] = _child(["--compile", str(path), "--calib",
                                                     str(args.calib), "--trace"])[
                    "tracemalloc_peak_mb"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    full = 64
    print(f"ResNet-18 (CIFAR stem, 1×3×32×32, 1000 classes), legacy export, calibration "
          f"{args.calib} random samples; each width compiled in a fresh process\n")
    head = ("| width | × | parameters | ONNX MB | compile s | import | calibrate | quantize | "
            "map | sim | peak RSS MB | RSS before MB | s per M params |")
    if args.tracemalloc:
        head += " tracemalloc peak MB |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        p = r["phases"]
        line = (f"| {r['width']} | {r['width'] / full:g} | {r['params']:,} | {r['onnx_mb']:.1f} | "
                f"{r['compile_s']:.1f} | {p.get('import', 0):.1f} | {p.get('calibrate', 0):.1f} | "
                f"{p.get('quantize', 0):.1f} | {p.get('map', 0):.1f} | "
                f"{p.get('sim_agreement', 0):.1f} | {r['peak_rss_mb']:.0f} | "
                f"{r['rss_before_mb']:.0f} | {r['compile_s'] / (r['params'] / 1e6):.2f} |")
        if args.tracemalloc:
            line += f" {r['tracemalloc_peak_mb']:.0f} |"
        print(line)


if __name__ == "__main__":
    main()
