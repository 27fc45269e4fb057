"""The CPU simulator: vectorized, batched, bit-exact to the integer contract (sim.reference)."""
from sim.cpu.runner import Session, engine_for, run
from sim.results import LayerStats, SimResult

__all__ = ["run", "Session", "engine_for", "SimResult", "LayerStats"]
