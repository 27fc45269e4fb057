"""Registry of ONNX op converters, one small function per op type (like onnx2torch's).

Adding an op means adding one decorated function in `converters/` and one test. A converter gets
the ONNX node, the import context and the model's opset, and adds float-graph nodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MIN_OPSET, MAX_OPSET = 11, 21


@dataclass(frozen=True)
class Converter:
    op_type: str
    fn: Callable
    note: str


CONVERTERS: dict[str, Converter] = {}
# written out as primitive ops before conversion (toolchain.onnx_import.expand)
COMPOSITES = ("LayerNormalization", "LRN")


def converter(*op_types: str, note: str = ""):
    """Register `fn(node, ctx)` for the given default-domain op types, opsets 11 to 21."""
    def register(fn):
        for op in op_types:
            CONVERTERS[op] = Converter(op, fn, note)
        return fn
    return register


def supported_ops() -> list[str]:
    """Every op type with a converter (complete once `toolchain.onnx_import` is imported, which
    imports every converter module) and every composite the importer writes out."""
    return sorted(set(CONVERTERS) | set(COMPOSITES))
