"""sim.lava throughput: pipelined samples (one per step, or B lanes per step) against one run()
per sample, and sim.cpu, in one run.

    .venv/bin/python benchmarks/lava_throughput.py [--samples 1000] [--per-sample 40]
        [--lanes 64] [--lanes-samples 16000]

Network: the digits CNN (toolchain/data/digits_cnn_relu.onnx compiled with the digits training
split as calibration); if that file is missing, tests/nets.py's avgpool_cnn (the table says which).
Rows, all on the same machine in the same run:
- sim.lava pipelined, 1 lane: `sim.lava.run(..., lanes=1)` on all samples at once: one source
  holding them back to back, one sample per timestep, outputs read once (wall time of the whole
  call, start-up included);
- sim.lava pipelined, B lanes: the same with B samples side by side in every timestep, on the same
  samples and on `--lanes-samples` samples (where the ~1 s start-up weighs less);
- sim.lava, one run() per sample, built once: a `sim.lava.Network` between a source and Lava's
  sink RingBuffer, built once; per sample the source Var is set, `run(RunSteps(1 + latency))`
  blocks, the sink's Var is read (the way most Lava code feeds data);
- sim.lava, one run() per sample, rebuilt: a fresh `sim.lava.run` per sample (a few samples);
- sim.cpu: `sim.cpu.run` on all samples (median of 5).
The last column is each row's rate over the built-once per-sample rate. Fixed_pt outputs are
checked against sim.cpu on every row. Runs in about a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sim  # noqa: E402,F401  (before numpy: its BLAS kernels, see sim/__init__.py)

import numpy as np
from rich.console import Console
from rich.table import Table

import sim.cpu  # noqa: E402
import sim.lava  # noqa: E402

MODEL = ROOT / "toolchain" / "data" / "digits_cnn_relu.onnx"


def network():
    """(artifact, test inputs, description)."""
    if MODEL.exists():
        from exporters.digits import load_digits_split
        from toolchain.compiler import compile_onnx

        x_train, _, x_test, _ = load_digits_split()
        return compile_onnx(MODEL, calib=x_train).artifact, x_test, f"digits CNN ({MODEL.name})"
    sys.path.insert(0, str(ROOT / "tests"))
    import nets

    compiled, _, test = nets.compiled("avgpool_cnn")
    return compiled.artifact, test, f"tests/nets.py avgpool_cnn ({MODEL.name} not found)"


def per_sample_built_once(art, x: np.ndarray) -> tuple[float, np.ndarray]:
    """Seconds for len(x) samples fed one run() at a time into processes built once."""
    from sim.lava.compat import load_lava

    load_lava()
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    from lava.proc.io.sink import RingBuffer

    from sim.lava.procs.network import Network
    from sim.lava.procs.process import SpikeSource

    inp = art.node(art.input)
    net = Network(art, timesteps=1, lanes=1, encoded=True)   # one sample per step, streaming
    source = SpikeSource(samples=x[:1, None].astype(np.float32), inv_scale=inp.inv_scale,
                         lo=inp.lo, hi=inp.hi, timesteps=1, name="source")
    sink = RingBuffer(shape=net.out.shape, buffer=1)          # the last step's accumulator
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    steps = 1 + net.latency      # the sample set before the run leaves `out` at its last step
    acc = []
    sink.run(RunSteps(steps), Loihi2SimCfg(select_tag="fixed_pt"))  # compile, start
    acc.append(sink.data.get()[0, :, 0])
    start = time.perf_counter()
    for sample in x[1:]:
        source.samples.set(sample[None, None].astype(np.float32))  # (groups, lanes, ...)
        sink.run(RunSteps(steps))
        acc.append(sink.data.get()[0, :, 0])
    seconds = time.perf_counter() - start
    sink.stop()
    return seconds / (len(x) - 1) * len(x), np.rint(np.array(acc)).astype(np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000, help="samples for the pipelined run")
    ap.add_argument("--per-sample", type=int, default=40, help="samples fed one run() each")
    ap.add_argument("--rebuilt", type=int, default=3, help="samples run with a rebuild each")
    ap.add_argument("--lanes", type=int, default=64, help="B: samples side by side per step")
    ap.add_argument("--lanes-samples", type=int, default=16000,
                    help="samples for the second lanes row")
    args = ap.parse_args()
    art, pool, what = network()
    x = np.concatenate([pool] * (args.samples // len(pool) + 1))[: args.samples]
    reference = sim.cpu.run(art, x)

    def lava_rate(samples: np.ndarray, lanes: int) -> float:
        expected = reference.accumulator if len(samples) == len(x) else \
            sim.cpu.run(art, samples).accumulator
        start = time.perf_counter()
        result = sim.lava.run(art, samples, lanes=lanes)
        seconds = time.perf_counter() - start
        assert np.array_equal(result.accumulator, expected), f"{lanes} lanes not exact"
        return len(samples) / seconds

    pipelined = lava_rate(x, 1)
    lanes = lava_rate(x, args.lanes)
    many = np.concatenate([pool] * (args.lanes_samples // len(pool) + 1))[: args.lanes_samples]
    lanes_many = lava_rate(many, args.lanes)

    once, acc = per_sample_built_once(art, x[: args.per_sample])
    assert np.array_equal(acc, reference.accumulator[: args.per_sample]), "per-sample not exact"

    start = time.perf_counter()
    for i in range(args.rebuilt):
        single = sim.lava.run(art, x[i:i + 1])
        assert np.array_equal(single.accumulator, reference.accumulator[i:i + 1])
    rebuilt = (time.perf_counter() - start) / args.rebuilt

    cpu_times = []
    for _ in range(5):
        start = time.perf_counter()
        sim.cpu.run(art, x)
        cpu_times.append(time.perf_counter() - start)
    cpu = statistics.median(cpu_times)

    built_once = args.per_sample / once
    rates = {
        f"sim.lava pipelined, 1 lane ({args.samples} samples, one run)": pipelined,
        f"sim.lava pipelined, {args.lanes} lanes ({args.samples} samples, one run)": lanes,
        f"sim.lava pipelined, {args.lanes} lanes ({args.lanes_samples} samples, one run)":
            lanes_many,
        f"sim.lava one run() per sample, built once ({args.per_sample} samples)": built_once,
        f"sim.lava one run() per sample, rebuilt each ({args.rebuilt} samples)": 1 / rebuilt,
        f"sim.cpu ({args.samples} samples, batches of 1024)": args.samples / cpu,
    }
    table = Table(title=f"{what}: sim.lava fixed_pt throughput, latency "
                        f"{sim.lava.graph.plan(art).latency} steps")
    for column in ("mode", "samples/s", "÷ built-once per-sample"):
        table.add_column(column)
    for mode, rate in rates.items():
        table.add_row(mode, f"{rate:,.1f}", f"{rate / built_once:,.2f}×")
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
