"""sim.lava: run an SFN artifact as Lava processes (Loihi2SimCfg, fixed_pt or floating_pt).

`run(art, x, ...)` returns the same `SimResult` as sim.cpu; fixed_pt equals sim.cpu bit for bit.
`Network(art, ...)` is the same network as one hierarchical Lava Process with an `inp` and an
`out` port, to wire into a Lava graph of one's own (sim.lava.procs.network; `run` uses it).
Feed-forward artifacts run as one process per neuron layer (sim.lava.graph), every timestep
carrying `lanes` samples side by side; recurrent ones (a Delay node, inputs (N, T, *in)) as one
cell process over batches of trials (sim.lava.recurrent).
`hardware_case(node)` says how a node would reach Loihi 2 (docs/hardware.md).

Importing this package imports no Lava and leaves the multiprocessing start method alone; it
installs the Python 3.11 shim (sim.lava.compat), so `from lava.proc.dense.process import Dense`
works afterwards with no other call. `Network` and a run import Lava.
"""
from importlib import import_module

from sim.lava import compat  # noqa: F401  (installs the 3.11 import shim; imports no Lava)
from sim.lava.hardware import HARDWARE_CASES, hardware_case
from sim.lava.guard import TAGS
from sim.lava.runner import run

__all__ = ["run", "Network", "hardware_case", "HARDWARE_CASES", "TAGS"]


def __getattr__(name: str):
    """`Network` loads on first use (PEP 562, as toolchain's exports do): it is a Lava Process,
    so importing it imports Lava."""
    if name == "Network":
        return import_module("sim.lava.procs.network").Network
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
