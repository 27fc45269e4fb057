"""Quantization: float graph + calibration → SFN graph of Loihi-style integers.

Every integer tensor carries, per element, the float `unit` one integer step stands for, a pending
integer `bias` (added by the neuron or readout that consumes it) and a static `bound` on |value|
(`QTensor`). A rule per float-graph op turns its inputs' tensors into SFN nodes (sim.ops) and its
output's tensor; the rules are grouped by family: `synapses` (input, dense, conv, affine, add),
`structure` (pools and index maps), `activations` (ReLU/Clip neurons, tables), `products`
(products of two activations), `recurrent` (delay, leaky units), `gated` (the states and
complement gate of LSTM and GRU cells). A static check that |current|
+ |bias| + θ//2 fits the signed 24-bit state names the layer. Every layer gets a `LayerRow`
for the compiler's table.
"""
from toolchain.quantize.activations import ActivationRules
from toolchain.quantize.gated import GatedRules
from toolchain.quantize.levels import fit_levels, function_steps
from toolchain.quantize.products import ProductRules
from toolchain.quantize.quantizer import QuantizerBase
from toolchain.quantize.recurrent import RecurrentRules
from toolchain.quantize.structure import StructureRules
from toolchain.quantize.synapses import SynapseRules
from toolchain.quantize.tensor import FIRE_MODES, LayerRow, QTensor, QuantOptions


class Quantizer(SynapseRules, StructureRules, ActivationRules, ProductRules, RecurrentRules,
                GatedRules, QuantizerBase):
    """One quantization of a float graph (QuantizerBase) with every family's rules."""


__all__ = ["Quantizer", "QuantOptions", "QTensor", "LayerRow", "FIRE_MODES", "fit_levels",
           "function_steps"]
