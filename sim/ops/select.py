"""A constant gather: each output element is one input element or zero (an index map)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.ops.base import CHIP_SYNAPSE, INDEX, Node, register


@register
@dataclass
class Select(Node):
    """out.flat[i] = in.flat[table[i]], or 0 where table[i] = −1 (per sample, row-major over the
    per-sample shapes). No arithmetic: Slice, Gather and Split with constant indices, Expand
    (repeated indices), nearest-neighbour Resize, and the zero insertion and edge replication in
    front of a transposed convolution or a bilinear upsampling's kernel. The table is stored as
    int32 (every index is below the activation-size limit) and checked in full."""
    table: np.ndarray = None
    kind: ClassVar[str] = "select"
    role: ClassVar[str] = INDEX
    keeps_sign: ClassVar[bool] = True
    hardware: ClassVar[str] = CHIP_SYNAPSE
    synops: ClassVar[str | None] = ""
    array_dtypes: ClassVar[dict] = {"table": np.int32}

    def __post_init__(self):
        if isinstance(self.table, np.ndarray) and self.table.dtype != np.int64 \
                and np.issubdtype(self.table.dtype, np.integer):
            self.table = self.table.astype(np.int64)

    def _check(self, inputs):
        (x,) = inputs
        t = self.table
        size = int(np.prod(self.shape))
        if not isinstance(t, np.ndarray) or t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
            return "table must be a 1-D integer array"
        if len(t) != size:
            return f"table has {len(t)} entries, the output shape {tuple(self.shape)} {size}"
        n_in = int(np.prod(x))
        if n_in >= np.iinfo(np.int32).max:
            return f"input {x} has {n_in} elements, over the int32 table range"
        if size and (int(t.min()) < -1 or int(t.max()) >= n_in):
            return f"table entries span [{int(t.min())}, {int(t.max())}], outside [−1, {n_in})"
        return None

    def apply(self, ins, count):
        (x,) = ins
        flat = x.reshape(len(x), -1)
        if self.has_zeros:   # a zero in front: entry k reads k + 1, −1 reads the zero
            flat = np.concatenate([np.zeros((len(x), 1), flat.dtype), flat], axis=1)
            out = flat[:, self.table + 1]
        else:
            out = flat[:, self.table]
        return out.reshape((len(x),) + tuple(self.shape)), 0

    @property
    def has_zeros(self) -> bool:
        return bool(len(self.table)) and int(self.table.min()) < 0

    def value_range(self, ranges):
        lo, hi = ranges[0]
        if self.has_zeros:
            lo, hi = min(lo, 0), max(hi, 0)
        return lo, hi

    def index_tables(self, in_shapes) -> list[np.ndarray]:
        return [self.table]

    def emit(self, b, ins):
        flat = b.op("Reshape", [ins[0], b.const([0, -1], np.int64)])
        table = self.table
        if self.has_zeros:
            # a zero put in front of the first element: entry k reads k + 1, −1 reads the zero
            flat = b.op("Pad", [flat, b.const([0, 1, 0, 0], np.int64)])
            table = table + 1
        out = b.op("Gather", [flat, b.const(table, np.int64)], axis=1)
        return b.op("Reshape", [out, b.const([-1] + list(self.shape), np.int64)])
