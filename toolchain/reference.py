"""The integer reference: an SFN graph written as a plain ONNX model onnxruntime runs.

Float32 ops on integer values, exact while every partial sum stays below 2²⁴; a product or sum
whose static bound float32 does not hold is computed in float64 (sim.emit), and the neuron
arithmetic (division by θ, floor) is in float64, exact for 24-bit operands. A result itself
beyond 2²⁴ rounds to float32 — harmless into a neuron, whose state saturates there. Each node kind
writes its own T = 1 equations with standard ops (`Node.emit`, sim.ops, through sim.emit's
builder), so the model is an oracle independent of both simulators. Outputs, as the simulators'
SimResult names them: `output` (what the ONNX model outputs: the readout through its final
softmax, if it had one), `logits` (the readout before it) and `accumulator` (integers).
"""
from __future__ import annotations

import onnx

from sim.artifact import Artifact
from sim.emit import OPSET, Builder, model, write

__all__ = ["OPSET", "Builder", "emit_reference"]


def emit_reference(art: Artifact) -> onnx.ModelProto:
    b = Builder()
    write(b, art.nodes)
    shape = art.output_shape
    return model(b, art.input_shape,
                 {"output": shape, "accumulator": shape, "logits": shape},
                 "sfn_reference", "sfn-toolchain reference")
