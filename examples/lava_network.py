"""sim.lava.Network in a Lava graph of one's own: Lava's RingBuffer source → the compiled digits
CNN as one hierarchical Lava Process → Lava's RingBuffer sink, run with the user's own run
configuration; the outputs equal sim.cpu's bit for bit.

    python examples/lava_network.py                  # floating_pt, float samples on `inp`
    python examples/lava_network.py --fixed          # fixed_pt: the encoder's integers on `inp`
    python examples/lava_network.py --timesteps 4 --samples 20

Lava's fixed_pt RingBuffer holds int32, so a fixed_pt graph feeds the Network the encoder's
integers (`Network(..., encoded=True)`, `net.feed` encodes them); floating_pt carries floats.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sim.cpu  # noqa: E402
import sim.lava  # noqa: E402  (installs the Python 3.11 shim: Lava imports directly below)
import toolchain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixed", action="store_true", help="fixed_pt models (default floating_pt)")
    ap.add_argument("--timesteps", type=int, default=1)
    ap.add_argument("--samples", type=int, default=12)
    args = ap.parse_args()

    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source

    x_calib, _, x_test, y_test = toolchain.examples.load_digits_split()
    art = toolchain.compile(toolchain.examples.DIGITS_CNN, calib=x_calib)
    x, T = x_test[:args.samples], args.timesteps

    net = sim.lava.Network(art, timesteps=T, binary=T > 1, encoded=args.fixed)
    steps = net.num_steps(len(x))
    source = Source(data=net.feed(x))                       # (1, 8, 8, steps)
    sink = Sink(shape=net.out.shape, buffer=steps)          # (10,) per step
    source.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    run_cfg = Loihi2SimCfg(select_tag="fixed_pt" if args.fixed else "floating_pt")
    sink.run(condition=RunSteps(num_steps=steps), run_cfg=run_cfg)
    data = sink.data.get()
    sink.stop()

    y = net.readout(net.collect(data, len(x)))
    ref = sim.cpu.run(art, x, timesteps=T, binary=T > 1).output
    print(f"{len(x)} samples, T = {T}, latency {net.latency} steps, {steps} Lava steps, "
          f"{run_cfg.select_tag}")
    print("accuracy", float((y.argmax(1) == y_test[:len(x)]).mean()),
          "| equals sim.cpu bit for bit:", np.array_equal(y, ref))


if __name__ == "__main__":
    main()
