"""The CPU simulator: vectorized, batched, bit-exact reference backend."""
from sim.cpu.runner import LayerStats, SimResult, run

__all__ = ["run", "SimResult", "LayerStats"]
