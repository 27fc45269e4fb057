"""One-pass kernels for the program's elementwise work (sim.cpu.program), compiled by numba.

torch runs a fire as four passes over memory (add the offset, multiply, floor, clip), a sum of
shifted terms as two or three per term, a table neuron as five; these kernels read each operand
once and write the result once. They do the same IEEE operations as kernels.FirePlan and the
contract's sums: a term floor(g·x·2^e) and the sum of two in float64 (exact: the callers bound
every partial sum below 2⁵³), then the fire's v = sum + offset, the clip to ±V_MAX, the multiply
by fl(1/θ) or the division by θ, the floor and the clip to [lo, hi] in the plan's float dtype.
Where a rounding happens (the fire's multiply or division) nothing is fused with it: numba
compiles without fast-math, so LLVM contracts no a·b + c into one FMA rounding, and every
payload equals the torch and numpy forms. Only the reductions of exact integers (row sums and
maxima, whose value no order changes) may reassociate.

A value is read in its own memory order when the batch axis is outermost (`order`: NCHW and
channels-last alike); per-neuron constants are laid out once in that order (`Layouts`). A sum's
second operand may also be broadcast along the batch or along its trailing axes (a row
statistic sent back along its row). Anything else, or a machine without numba, takes the torch
form. Compiled code is cached on disk beside this file (numba's cache), so a process compiles
only what an earlier one has not."""

from __future__ import annotations

import os

import numpy as np

from sim import semantics

try:        # a declared dependency; the torch forms serve a process where it fails to load
    import numba
except Exception:          # pragma: no cover - depends on the installation
    numba = None

# SFN_CPU_FUSED=0 turns the kernels off for a process (the torch forms run)
_ENABLED = numba is not None and os.environ.get("SFN_CPU_FUSED", "1") != "0"


def available() -> bool:
    """Whether the kernels run in this process."""
    return _ENABLED


def enable(on: bool) -> bool:
    """Turn the kernels on or off (tests compare both forms); returns the previous setting.
    They stay off where numba is missing."""
    global _ENABLED
    before = _ENABLED
    _ENABLED = bool(on) and numba is not None
    return before


# below this many values a call's fixed cost (Python and numba's dispatch) exceeds what one
# pass saves over torch's several
MIN_VALUES = 2 ** 14


def worth(x) -> bool:
    """Whether the kernels run and x (an array or a tensor) is large enough to repay a call."""
    return _ENABLED and (x.numel() if hasattr(x, "numel") else x.size) >= MIN_VALUES


def _array(v) -> np.ndarray:
    return v if isinstance(v, np.ndarray) else v.numpy()


def order(x: np.ndarray) -> tuple | None:
    """The axes of x from the outermost to the innermost in memory (x.transpose of them is
    C-contiguous), when the batch axis is the outermost; else None."""
    if x.flags.c_contiguous:
        return tuple(range(x.ndim))
    perm = (0,) + tuple(sorted(range(1, x.ndim), key=lambda a: -x.strides[a]))
    if np.transpose(x, perm).flags.c_contiguous:
        return perm
    return None


class Layouts:
    """Constants broadcast to a node's shape (without the batch axis) and laid out flat in a
    given memory order, made once per order and kept."""

    def __init__(self, shape: tuple, *constants):
        self.shape = (1,) + tuple(shape)
        self.constants = [np.asarray(c) for c in constants]
        self._made: dict = {}

    def __call__(self, perm: tuple, dtypes) -> list:
        key = (perm, tuple(np.dtype(d) for d in dtypes))
        if key not in self._made:
            self._made[key] = [
                np.ascontiguousarray(np.transpose(np.broadcast_to(c, self.shape), perm),
                                     dtype=d).reshape(-1)
                for c, d in zip(self.constants, dtypes)]
        return self._made[key]


class Shaped:
    """How a value of one shape and memory order is read and written as C-contiguous rows
    (batch, rest): what a call repeats, worked out once per (shape, strides, dtype) and kept."""

    def __init__(self, x: np.ndarray, perm: tuple):
        self.perm = None if perm == tuple(range(x.ndim)) else perm
        self.rows = (x.shape[0], x[:1].size)
        self.physical = tuple(x.shape[a] for a in perm)
        self.back = tuple(int(a) for a in np.argsort(perm))

    def read(self, x: np.ndarray) -> np.ndarray:
        return (x if self.perm is None else x.transpose(self.perm)).reshape(self.rows)

    def new(self, dtype) -> tuple[np.ndarray, np.ndarray]:
        """(a new array shaped and laid out as the value, its memory as rows)."""
        flat = np.empty(self.rows, dtype)
        if self.perm is None:
            return flat.reshape(self.physical), flat
        return flat.reshape(self.physical).transpose(self.back), flat


def _key(x: np.ndarray) -> tuple:
    return x.shape, x.strides, x.dtype


def _laid_out(x: np.ndarray, consts: Layouts, dtypes):
    """(Shaped of x, its constants in x's memory order), or False for a layout that is not
    batch-major: an elementwise kernel's preparation for one signature."""
    perm = order(x)
    if perm is None:
        return False
    return Shaped(x, perm), consts(perm, dtypes)


class _Prepared(dict):
    """A kernel's per-signature preparations, at most a handful (a run meets one or two
    batch sizes)."""

    def get_or(self, key, make):
        value = self.get(key)
        if value is None:
            if len(self) >= 8:
                self.clear()
            value = self[key] = make()
        return value


if numba is not None:
    _jit = numba.njit(nogil=True, cache=True, error_model="numpy")

    @_jit
    def _fired(v, fac, recip, vmax, low, high):
        """One payload: clip(floor(clip(v, ±vmax) ⊙ fac), low, high), ⊙ a multiply (recip) or
        a division, in fac's dtype (the fire of kernels.FirePlan)."""
        v = min(max(v, -vmax), vmax)
        v = v * fac if recip else v / fac
        return min(max(np.floor(v), low), high)

    @_jit
    def _fire(x, off, fac, lo, hi, recip, clip, out):
        """out = clip(floor(clip(x + off, ±V_MAX) ⊙ fac), lo, hi) over rows x (batch, n) with
        per-neuron offset and factor (n,), ⊙ a multiply (recip) or a division, in fac's
        dtype; returns how many currents lay beyond ±V_MAX (counted when `clip`: a plan whose
        bound allows it)."""
        f = fac.dtype.type
        vmax, low, high = f(semantics.V_MAX), f(lo), f(hi)
        beyond = np.zeros(out.shape[1], np.int32)     # per position: a map, not a reduction
        for i in range(out.shape[0]):
            if clip:
                for k in range(out.shape[1]):
                    v = f(x[i, k]) + off[k]
                    beyond[k] += (v > vmax) | (v < -vmax)
            for k in range(out.shape[1]):
                out[i, k] = _fired(f(x[i, k]) + off[k], fac[k], recip, vmax, low, high)
        return beyond.sum()

    @_jit
    def _sum(x1, g1, e1, x2, g2, e2, two, off, fac, lo, hi, recip, fire, out):
        """s = t(x1, g1, e1) [+ t(x2, g2, e2)] per position, t(x, g, e) = floor(x·g·e) for e
        a power of two — every operation exact in float64 for the integers the callers bound
        below 2⁵³ — over x1 (batch, p, n) and x2 (batch or 1, p, n or 1: broadcast along
        what is 1) with gains and fire constants (p, n); out (batch, p, n) = s (fire False)
        or the fire of s + off in fac's dtype (_fire's operations). Returns how many
        currents lay beyond ±V_MAX."""
        f = fac.dtype.type
        vmax, low, high = f(semantics.V_MAX), f(lo), f(hi)
        wide = x2.shape[2] > 1
        beyond = np.zeros(out.shape[1:], np.int32)
        for i in range(out.shape[0]):
            i2 = i if x2.shape[0] > 1 else 0
            for j in range(out.shape[1]):
                b0 = np.float64(x2[i2, j, 0])
                for k in range(out.shape[2]):
                    s = np.floor(np.float64(x1[i, j, k]) * g1[j, k] * e1)
                    if two:
                        b = np.float64(x2[i2, j, k]) if wide else b0
                        s += np.floor(b * g2[j, k] * e2)
                    if not fire:
                        out[i, j, k] = s
                        continue
                    v = f(s) + off[j, k]
                    beyond[j, k] += (v > vmax) | (v < -vmax)
                    out[i, j, k] = _fired(v, fac[j, k], recip, vmax, low, high)
        return beyond.sum()

    @_jit
    def _magnitude(bits, sign):
        """max |x| of floats x given as their bit patterns (an integer view): with the sign
        bit cleared the patterns of non-negative floats order as the floats do, and integer
        maxima vectorize."""
        m = bits.dtype.type(0)
        for k in range(bits.shape[0]):
            m = max(m, bits[k] & sign)
        return m


def measure(x) -> float | None:
    """max |x| of a value (array or tensor) in one pass where the kernels take it: a large
    enough C-contiguous float32 or float64 array; else None."""
    a = _array(x)
    if _ENABLED and a.size >= MIN_VALUES and a.dtype in (np.float32, np.float64) and \
            a.flags.c_contiguous:
        return max_abs(a)
    return None


# the integer view of a float's bits and the mask clearing its sign bit, by width
_SIGNLESS = {4: (np.int32, np.int32(2 ** 31 - 1)), 8: (np.int64, np.int64(2 ** 63 - 1))}


def max_abs(values: np.ndarray) -> float:
    """max |x| of a C-contiguous float32 or float64 array in one integer pass (_magnitude)."""
    ints, sign = _SIGNLESS[values.dtype.itemsize]
    m = _magnitude(values.reshape(-1).view(ints), sign) if values.size else ints(0)
    return float(np.array([m], ints).view(values.dtype)[0])


class FireKernel:
    """kernels.FirePlan's fire over a node's values in one pass (the same operations), its
    offset and factor laid out in each input's memory order once."""

    def __init__(self, shape: tuple, offset, factor, dtype, lo: int, hi: int,
                 saturate: bool, reciprocal: bool):
        self.dtype = np.dtype(dtype)
        self.lo, self.hi, self.saturate, self.reciprocal = lo, hi, saturate, reciprocal
        self.consts = Layouts(shape, np.zeros(1) if offset is None else offset, factor)
        self._prepared = _Prepared()

    def __call__(self, current, u8: bool = False):
        """(payloads: a new array laid out as `current`, in the plan's dtype or uint8 (u8),
        saturations), or None where the kernels are off or the layout is not batch-major."""
        if not _ENABLED:
            return None
        x = _array(current)
        prep = self._prepared.get_or(
            _key(x), lambda: _laid_out(x, self.consts, (self.dtype, self.dtype)))
        if prep is False:
            return None
        shaped, (off, fac) = prep
        out, flat = shaped.new(np.uint8 if u8 else self.dtype)
        sat = _fire(shaped.read(x), off, fac, self.lo, self.hi, self.reciprocal, self.saturate,
                    flat)
        return out, int(sat)


def _trailing(x: np.ndarray) -> int:
    """The number of leading axes after the batch axis along which x is not broadcast, when
    every later axis is (stride 0 or length 1); -1 otherwise."""
    axes = list(range(1, x.ndim))
    m = len(axes)
    while m and (x.strides[axes[m - 1]] == 0 or x.shape[axes[m - 1]] == 1):
        m -= 1
    if any(x.strides[a] == 0 and x.shape[a] > 1 for a in axes[:m]):
        return -1
    return m


class SumKernel:
    """A sum of one or two terms g_i·x_i·2^e_i (floored: a right shift) in float64, then as its
    float dtype or fired by a FirePlan in one pass (the sum's value never held). `shape`: the
    node's shape without the batch axis; gains broadcast against it."""

    def __init__(self, shape: tuple, gains, exps, plan=None):
        self.shape = tuple(shape)
        self.exps = [int(e) for e in exps]
        self.plan = plan
        self.gains = [np.asarray(g, np.float64) for g in gains]
        fdtype = plan.dtype if plan is not None else np.float64
        consts = [np.zeros(1), np.ones(1)] if plan is None else \
            [np.zeros(1) if plan.offset is None or plan.biased else plan.offset, plan.factor]
        self.fdtype = np.dtype(fdtype)
        self.consts = Layouts(self.shape, *self.gains, *consts)
        self._prepared = _Prepared()

    def __call__(self, xs, dtype=None, u8: bool = False):
        """(the sum as a new array of `dtype` and its max |·|, or the plan's payloads (uint8
        when u8) and their saturations), or None: more than two terms, the kernels off, or a
        layout they do not take (both operands laid out alike and batch-major; or one
        C-contiguous and the other broadcast along the batch and/or trailing axes)."""
        if not _ENABLED or not 1 <= len(xs) <= 2:
            return None
        xs = [_array(x) for x in xs]
        prep = self._prepared.get_or((tuple(_key(x) for x in xs), dtype, u8),
                                     lambda: self._prepare(xs))
        if prep is False:
            return None
        terms, shaped, split, core, g, e, off, fac = prep
        a, b = xs[terms[0]], xs[terms[-1]]
        batch, p, n = split
        if core is None:           # b laid out as a (or a alone)
            a3 = shaped.read(a).reshape(split)
            b3 = shaped.read(b).reshape(split) if b is not a else a3
        else:
            a3 = a.reshape(split)
            # b's varying core by basic indexing (a view); np.broadcast_to, a Python-level
            # call of several µs, only where b has fewer axes than the node
            full = b if b.ndim == len(self.shape) + 1 else \
                np.broadcast_to(b, (batch,) + self.shape)
            b3 = full[core[0]].reshape(core[1])
        plan = self.plan
        out, flat = shaped.new((np.uint8 if u8 else plan.dtype) if plan is not None else dtype)
        fire = plan.fire if plan is not None else None
        sat = _sum(a3, g[0], e[0], b3, g[-1], e[-1], len(xs) == 2, off, fac,
                   fire.lo if fire else 0, fire.hi if fire else 0,
                   bool(plan is not None and plan.reciprocal), plan is not None,
                   flat.reshape(split))
        return out, int(sat) if plan is not None else max_abs(flat)

    def _prepare(self, xs):
        batch = max(x.shape[0] for x in xs)
        shape = (batch,) + self.shape
        xs = [x if x.shape == shape else np.broadcast_to(x, shape) for x in xs]
        terms = list(range(len(xs)))
        if len(xs) == 2 and not xs[0].flags.c_contiguous and xs[1].flags.c_contiguous:
            terms.reverse()
        a, b = xs[terms[0]], xs[terms[-1]]
        perm = order(a)
        if perm is None:
            return False
        core = None
        if len(xs) == 1 or b.strides == a.strides:
            p, n = 1, a[:1].size
        else:
            m = _trailing(b)
            if perm != tuple(range(a.ndim)) or m < 0:
                return False
            take = (slice(0, 1 if b.strides[0] == 0 else batch),) + \
                tuple(slice(None) if k < m else slice(0, 1) for k in range(len(self.shape)))
            if not b[take].flags.c_contiguous:
                return False
            # b varies along the first m axes: rows of p = their size, each broadcast along
            # its n entries (b whole, m = all axes: one row of n)
            p = 1 if m == len(self.shape) else int(np.prod(self.shape[:m], dtype=np.int64))
            n = a[:1].size // p
            core = (take, (b[take].shape[0], p, n if p == 1 and m else 1))
        consts = self.consts(perm, [np.float64] * len(self.gains) + [self.fdtype] * 2)
        g = [consts[t].reshape(p, n) for t in terms]
        off, fac = (c.reshape(p, n) for c in consts[len(self.gains):])
        e = [2.0 ** self.exps[t] for t in terms]
        return terms, Shaped(a, perm), (batch, p, n), core, g, e, off, fac


if numba is not None:
    @_jit
    def _table(x, low, high, offset, shift, pairs, change, out):
        """out = the payload at index q = clip(x, low, high) + offset (per-neuron (n,)
        constants, exact in their dtype) of a table kept as blocks of 2^shift entries, block
        c's value pairs[2c] before its one change point change[c] and pairs[2c + 1] from it
        on; a row's indices first, then its gathers."""
        q = np.empty(out.shape[1], np.int32)
        for i in range(out.shape[0]):
            for k in range(out.shape[1]):
                q[k] = np.int32(min(max(x[i, k], low[k]), high[k]) + offset[k])
            for k in range(out.shape[1]):
                c = q[k] >> shift
                out[i, k] = pairs[2 * c + (q[k] >= change[c])]

    @_jit
    def _gather(x, low, high, offset, table, out):
        """out = table[clip(x, low, high) + offset] (per-neuron (n,) constants, the index
        exact in their dtype and below 2³¹: program.TABLE_ENTRIES), the indices of a row
        taken first, then its gathers."""
        q = np.empty(out.shape[1], np.int32)     # AVX2 converts floats to int32 only
        for i in range(out.shape[0]):
            for k in range(out.shape[1]):
                q[k] = np.int32(min(max(x[i, k], low[k]), high[k]) + offset[k])
            for k in range(out.shape[1]):
                out[i, k] = table[q[k]]


if numba is not None:
    # sums of exact integers (the caller's dtype holds every partial sum) and maxima come out
    # the same in any order: these two may reassociate (and so vectorize)
    _reducing = numba.njit(nogil=True, cache=True, error_model="numpy",
                           fastmath={"reassoc", "nnan", "ninf", "nsz"})

    @_reducing
    def _row_sums(x, out):
        f = out.dtype.type
        for i in range(x.shape[0]):
            s = f(0)
            for k in range(x.shape[1]):
                s += f(x[i, k])
            out[i] = s

    @_reducing
    def _row_maxima(x, out):
        for i in range(x.shape[0]):
            m = x[i, 0]
            for k in range(1, x.shape[1]):
                m = max(m, x[i, k])
            out[i] = m


def last_axis(x, how: str, dtype=None):
    """The sums ("sum", in `dtype`, which the caller chose exact for them) or maxima ("max")
    along the last axis of a C-contiguous x, kept as an axis of 1: a new array, or None where
    the kernels do not run or x is laid out otherwise."""
    if not _ENABLED:
        return None
    a = _array(x)
    if not a.flags.c_contiguous or a.shape[-1] < 1:
        return None
    rows = a.reshape(-1, a.shape[-1])
    out = np.empty(a.shape[:-1] + (1,), a.dtype if how == "max" else dtype)
    (_row_maxima if how == "max" else _row_sums)(rows, out.reshape(-1))
    return out


def blocks(table: np.ndarray, start: np.ndarray, width: np.ndarray, most: int = 20):
    """A table laid out as table_bands' consecutive bands (row r's band: `width[r]` entries
    from `start[r]`) recast as blocks of 2^s entries with at most one change of value inside
    each (s the largest up to `most` that allows it — s = 1 always does: a block of two has
    one position inside — each band realigned to a block): (s, first value, last value,
    index of the change (or the block's end) per block, each band's new start)."""
    table = np.asarray(table)
    start, width = np.asarray(start, np.int64), np.asarray(width, np.int64)
    changed = np.flatnonzero(table[1:] != table[:-1]) + 1     # differs from the one before
    band = np.searchsorted(start, changed, side="right") - 1
    pos = changed - start[band]                                  # position in its band
    band, pos = band[pos > 0], pos[pos > 0]                      # a band's first is no change
    for s in range(most, 0, -1):
        size = 1 << s
        aligned = np.concatenate([[0], np.cumsum((width + size - 1) // size * size)])
        q = aligned[band] + pos                        # the changes in the new layout
        q = q[q % size != 0]                            # a change at a block's start is none
        if np.unique(q >> s).size != q.size:
            continue
        n_blocks = int(aligned[-1]) >> s
        base = aligned[:-1]
        # each block's first and last entries (padding beyond a band repeats its last)
        first_at = np.arange(n_blocks, dtype=np.int64) << s
        owner = np.searchsorted(base, first_at, side="right") - 1
        rel = first_at - base[owner]
        first = table[start[owner] + np.minimum(rel, width[owner] - 1)]
        last = table[start[owner] + np.minimum(rel + size - 1, width[owner] - 1)]
        change = first_at + size
        block = q >> s
        change[block] = q
        return s, first, last, change, base
    raise AssertionError("unreachable: s = 1 holds at most one change per block")


def narrowest(values: np.ndarray) -> type:
    """The narrowest of uint8, int8, int16, float32 holding these integers exactly."""
    lo, hi = int(values.min(initial=0)), int(values.max(initial=0))
    for dtype in (np.uint8, np.int8, np.int16):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return dtype
    return np.float32


# a table of at most this many entries is gathered from directly (it stays in cache); a
# larger one through `blocks`
DIRECT_ENTRIES = 2 ** 20


class TableKernel:
    """A table neuron's gather (program._table: payload[clip(I, l − b, h − b) + b + start −
    l]) in one pass: from the table itself when it is small, else from the table recast by
    `blocks` (tens of MB become a few kB: a gather that stays in cache)."""

    def __init__(self, table, start, low, high, row, shape: tuple, bias):
        """table_bands' (table, start − l, l, h, row) for a node of `shape` with biases
        `bias` broadcasting against (1, *shape); a table given in its narrowest dtype
        (`narrowest`) is kept as it is, not copied."""
        low, high = np.asarray(low, np.int64), np.asarray(high, np.int64)
        table = np.asarray(table)
        self.table = table.astype(narrowest(table), copy=False)     # no copy if it is
        self.recast = None if self.table.size <= DIRECT_ENTRIES else \
            blocks(table, np.asarray(start, np.int64) + low, high - low + 1)
        offset = np.asarray(start)[row] + bias if self.recast is None else \
            self.recast[4][row] - low[row] + bias
        self.consts = Layouts(shape, low[row] - bias, high[row] - bias, offset)
        self._payloads: dict = {}
        self._prepared = _Prepared()

    def payloads(self, dtype) -> tuple:
        """The payloads as the gather reads them: the table in the narrowest dtype holding
        its payloads exactly, whatever the output's (a smaller table stays in cache; the store
        converts), or the blocks' (first, last) value pairs in the output's dtype and their
        change points."""
        if self.recast is None:
            return (self.table,)
        key = np.dtype(dtype).str
        if key not in self._payloads:
            self._payloads[key] = (np.stack(self.recast[1:3], 1).reshape(-1).astype(dtype),
                                   self.recast[3].astype(np.int32))
        return self._payloads[key]

    def __call__(self, current, dtype, out_dtype):
        """(payloads as a new array of out_dtype laid out as `current`) with the index taken
        in `dtype` (the caller's exact choice), or None where the kernels do not run."""
        if not _ENABLED:
            return None
        x = _array(current)
        prep = self._prepared.get_or((_key(x), dtype),
                                     lambda: _laid_out(x, self.consts, (dtype,) * 3))
        if prep is False:
            return None
        shaped, (low, high, offset) = prep
        out, flat = shaped.new(out_dtype)
        rows = shaped.read(x)
        if self.recast is None:
            _gather(rows, low, high, offset, self.payloads(out_dtype)[0], flat)
        else:
            _table(rows, low, high, offset, self.recast[0], *self.payloads(out_dtype), flat)
        return out
