"""sim.lava: run an SFN artifact as Lava processes (Loihi2SimCfg, fixed_pt or floating_pt).

`run(art, x, ...)` returns the same `SimResult` as sim.cpu; fixed_pt equals sim.cpu bit for bit.
Feed-forward artifacts run as one process per neuron layer (sim.lava.graph), every timestep
carrying `lanes` samples side by side; recurrent ones (a Delay node, inputs (N, T, *in)) as one
cell process over batches of trials (sim.lava.recurrent).
`hardware_case(node)` says how a node would reach Loihi 2 (docs/hardware.md). Importing this
package does not import Lava; a run does (through sim.lava.compat).
"""
from sim.lava.hardware import HARDWARE_CASES, hardware_case
from sim.lava.guard import TAGS
from sim.lava.runner import run

__all__ = ["run", "hardware_case", "HARDWARE_CASES", "TAGS"]
