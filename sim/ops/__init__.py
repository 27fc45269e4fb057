"""The SFN node kinds, one module each (`sim/ops/<kind>.py`), and what is derived from them.

Importing this package imports every module in it, and each registers its kind
(`sim.ops.base.register`), so adding a kind is adding one module (docs/contributing.md). The
node classes are available here by class name (`sim.ops.Conv`, also as `sim.ir.Conv`).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import fields

import numpy as np

from sim.errors import ArtifactError
from sim.ops.base import KINDS, Node

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

globals().update({cls.__name__: cls for cls in KINDS.values()})
__all__ = ["KINDS", "Node", "node_from_record", "check_node", "nonnegative",
           "array_dtype"] + sorted(cls.__name__ for cls in KINDS.values())


def array_dtype(cls: type[Node], field: str, default=None):
    """The dtype array field `field` of kind `cls` is stored with."""
    return cls.array_dtypes.get(field, default)


def node_from_record(record: dict, arrays: dict[str, np.ndarray]) -> Node:
    """Rebuild a node from its manifest record and arrays, checking every field is known."""
    kind = record.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    where = f"node {record.get('name')!r}"
    if cls is None:
        raise ArtifactError(f"{where}: unknown node kind {kind!r} (known: {sorted(KINDS)})")
    names = {f.name for f in fields(cls)}
    params = record.get("params", {})
    if not isinstance(params, dict):
        raise ArtifactError(f"{where}: params is a {type(params).__name__}, not an object")
    unknown = (set(params) | set(arrays)) - names
    if unknown:
        raise ArtifactError(f"{where}: unknown fields {sorted(unknown)} for a {kind} node")
    for name, value in params.items():
        if name in cls.array_dtypes and value is not None:
            raise ArtifactError(f"{where}: field {name!r} of a {kind} node is an array member, "
                                "not a parameter")
    for name, value in arrays.items():
        declared = cls.array_dtypes.get(name)
        if declared is None:
            raise ArtifactError(f"{where}: field {name!r} of a {kind} node is a parameter, not "
                                "an array")
        if value.dtype != np.dtype(declared):
            raise ArtifactError(f"{where}: field {name!r} is stored as {value.dtype}; a {kind} "
                                f"node stores it as {np.dtype(declared)}")
    kwargs = {}
    for f in fields(cls):
        if f.name in params:
            value = params[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        elif f.name in arrays:
            kwargs[f.name] = arrays[f.name]
    try:
        return cls(name=str(record["name"]), inputs=tuple(record["inputs"]),
                   shape=tuple(int(d) for d in record["shape"]),
                   **{k: v for k, v in kwargs.items() if k not in ("name", "inputs", "shape")})
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: malformed record ({exc})") from None


def check_node(node: Node, inputs: list[tuple[int, ...]]) -> str | None:
    """What is inconsistent about `node` given its inputs' shapes, or None (Node.check)."""
    return node.check(inputs)


def nonnegative(nodes: list[Node], known: set[str] | None = None) -> set[str]:
    """Names of the nodes whose values are never negative, in one pass over a topologically
    ordered node list: sources and neurons by their levels (lo ≥ 0), the kinds that keep sign
    (pooling, index maps) when every input is non-negative. `known`: a set from earlier nodes to
    extend (it is updated and returned)."""
    out: set[str] = set() if known is None else known
    for n in nodes:
        if n.role in ("source", "neuron"):
            lo = n.value_range([])[0]
            if lo >= 0:
                out.add(n.name)
        elif n.keeps_sign and n.inputs and all(i in out for i in n.inputs):
            out.add(n.name)
    return out
