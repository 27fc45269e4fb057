"""torch.nn.Module → ONNX (a ModelProto), checked with onnxruntime: what `toolchain.compile` does
with a torch module, and what exporters.onnx_export builds its files on.

Both torch exporters are supported (checked with torch 2.13, opsets 17 and 18):

- legacy TorchScript exporter (``dynamo=False``, the default here): deprecated since
  torch 2.9 but still present; dynamic batch via ``dynamic_axes``; emits the requested
  opset directly; in eval mode it folds BatchNorm into the preceding Conv.
- torch.export-based exporter (``dynamo=True``): dynamic batch via ``dynamic_shapes``
  with ``torch.export.Dim`` (a batch-1 example input is fine); it only implements
  opset >= 18 and its own down-conversion to 17 fails on this CNN (silently keeping
  18), so opset 17 is made here with ``onnx.version_converter`` on the finished model;
  its optimizer also folds BatchNorm into Conv, and global average pooling comes out
  as ReduceMean + Reshape rather than GlobalAveragePool + Flatten. It logs and prints
  a lot, which is silenced here.

torch is imported by this module: import it only where a torch module is at hand.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime
import torch
from torch import nn

from toolchain.errors import ModelError

INPUT_NAME = "input"
OUTPUT_NAME = "output"
DYNAMO_MIN_OPSET = 18  # the lowest opset the torch.export-based exporter implements


class ExportCheckError(ModelError, ValueError):
    """onnxruntime's output for the exported model differs from torch's."""


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' log lines, warnings (except TracerWarning) and prints."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    saved_levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            # but keep the tracer's warnings: they name Python control flow baked into the graph
            warnings.simplefilter("default", torch.jit.TracerWarning)
            yield
    finally:
        for logger, level in zip(loggers, saved_levels):
            logger.setLevel(level)


# Reductions whose axes moved from attribute to input in opset 18 (ReduceSum did so in 13).
_REDUCE_OPS_AXES_INPUT_18 = {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                             "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare"}


def _drop_reduce_noop_attribute(proto: onnx.ModelProto) -> None:
    """Undo an onnx version-converter slip (onnx 1.23, 18 -> 17): it moves ``axes`` back
    to an attribute but keeps ``noop_with_empty_axes``, which these ops lack before 18,
    so onnxruntime rejects the model. At its default 0 the attribute means nothing then.
    """
    for node in proto.graph.node:
        if node.op_type not in _REDUCE_OPS_AXES_INPUT_18:
            continue
        for attribute in list(node.attribute):
            if attribute.name == "noop_with_empty_axes":
                if attribute.i != 0:
                    raise ValueError(f"export_onnx: node {node.name!r} ({node.op_type}) has noop_with_empty_axes=1, "
                                     "which has no equivalent below opset 18; export with opset=18")
                node.attribute.remove(attribute)


def export_proto(model: nn.Module, example_input: torch.Tensor, opset: int, dynamo: bool) -> onnx.ModelProto:
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset, verbose=False)
    with _quiet():
        if dynamo:
            # Below 18 the exporter's own down-conversion fails on ReduceMean ("No
            # initializer or constant input to node found") and silently keeps opset 18;
            # converting the finished model works, so export at 18 and convert here.
            names["opset_version"] = max(opset, DYNAMO_MIN_OPSET)
            program = torch.onnx.export(
                model, (example_input,), None, dynamo=True, external_data=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},), **names,
            )
            proto = program.model_proto
            if opset < DYNAMO_MIN_OPSET:
                proto = onnx.version_converter.convert_version(proto, opset)
                _drop_reduce_noop_attribute(proto)
        else:
            buffer = io.BytesIO()
            torch.onnx.export(
                model, (example_input,), buffer, dynamo=False,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names,
            )
            proto = onnx.load_from_string(buffer.getvalue())
    produced = {entry.domain: entry.version for entry in proto.opset_import}.get("", None)
    if produced != opset:
        raise ValueError(f"export_onnx: asked for opset {opset}, the {'dynamo' if dynamo else 'legacy'} "
                         f"exporter produced opset {produced}")
    return proto


def inline_initializer_identities(proto: onnx.ModelProto) -> None:
    """Replace each ``Identity(initializer)`` node by a copy of the initializer.

    The legacy exporter deduplicates equal initializers (e.g. every Clip's min 0.0)
    and aliases the copies through Identity nodes; the compiler should see each
    Clip bound as a plain initializer.
    """
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    graph_outputs = {output.name for output in graph.output}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in graph_outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            graph.node.remove(node)


def check_export(model: nn.Module, proto: onnx.ModelProto, example_input: torch.Tensor, rtol: float, atol: float) -> None:
    """Compare onnxruntime with torch on the example input and on a random batch of 3."""
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    random_batch = torch.randn((3, *example_input.shape[1:]), generator=generator, dtype=example_input.dtype)
    for label, x in (("example", example_input), ("random batch-3", random_batch)):
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=rtol, atol=atol):
            diff = np.abs(got - expected).max() if got.shape == expected.shape else float("inf")
            raise ExportCheckError(
                f"export_onnx: onnxruntime differs from torch on the {label} input: max |diff| = {diff:.3g} "
                f"(shapes {got.shape} vs {expected.shape}, rtol={rtol}, atol={atol}); the model was not written. "
                "Look for Python control flow or state in forward() that tracing bakes in."
            )


def to_onnx(model: nn.Module, example_input: torch.Tensor, *, opset: int = 17,
            dynamo: bool = False, check: bool = True, rtol: float = 1e-4,
            atol: float = 1e-5) -> onnx.ModelProto:
    """`model` exported in eval mode (its training mode restored afterwards): input named
    "input", output "output", batch axis dynamic; with `check`, onnxruntime must reproduce the
    torch output on `example_input` and on a seeded random batch of 3 (else ExportCheckError)."""
    was_training = model.training
    model.eval()
    try:
        proto = export_proto(model, example_input, opset, dynamo)
        inline_initializer_identities(proto)
        if check:
            check_export(model, proto, example_input, rtol, atol)
    finally:
        model.train(was_training)
    return proto
