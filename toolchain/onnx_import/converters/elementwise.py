"""Elementwise functions of ONE tensor → adaptive (table) SFN neurons.

Sigmoid, HardSigmoid, HardSwish, Tanh, Erf, Gelu, LeakyRelu, Elu, Softplus, Mish, Exp, Sqrt,
Reciprocal, a constant divided by a tensor and Pow (by a constant) become float-graph `table` nodes: `table(fn)` of their input. The quantizer turns one
into an adaptive neuron whose integer thresholds are the inputs at which the rounded output
changes and whose payload table is the rounded output (`Quantizer.op_table`) — exact on the
integer grid, for monotone and non-monotone functions alike.

Chains that stay a function of one tensor compose into one table instead of a chain of neurons:
a unary op or a uniform (per-tensor) constant Add/Sub/Mul/Div on a table, and a binary
Add/Sub/Mul/Div whose operands are both functions of the same tensor through tables, uniform
constant affines and ReLU/Clip (SiLU = x·sigmoid(x), GELU's x·½(1 + erf(x/√2)), its tanh form
with x³, x·relu6(x + 3)/6, Mish's x·tanh(softplus(x))). The nodes a composition bypasses stay in
the float graph (calibration reads them) and are dropped by the quantizer when nothing uses them.
A product of two different activations is a `mul2` node (arith.mul), computed by product
neurons.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from toolchain.onnx_import.registry import converter

TABLE = "table"


def _identity(z):
    return z


def add_table(node, ctx, root: str, fn, expr: str, bounds=None, activation: bool = True) -> str:
    """Add a `table` node computing fn(root) under the node's output name. `bounds` (inf, sup)
    of fn, when known, caps the output range calibration would give it. `activation`: the
    table composes an activation function (sigmoid, GELU, a ReLU, …) and its neuron has
    --levels levels; otherwise it is arithmetic inside a layer (exp, 1/x, √x, x², a softmax's or
    a normalization's steps) and gets the quantizer's internal level count."""
    return ctx.add(node, TABLE, [root], fn=fn, expr=expr, bounds=bounds,
                   **({} if activation else {"internal": True}))


def _activation(ctx, links, root: str) -> bool:
    """Whether an activation (a table that is one, a ReLU/Clip) lies on a chain (from `chain`)
    before `root`."""
    for n, _, _ in links:
        if n == root:
            return False
        d = ctx.fg[n]
        if d["op"] == "relu" or (d["op"] == TABLE and not d["params"].get("internal")):
            return True
    return False


def _uniform(d) -> tuple[float, float] | None:
    """(scale, shift) of an affine node that is the same for every channel, else None."""
    s, t = d["params"]["scale"], d["params"]["shift"]
    if np.all(s == s[0]) and np.all(t == t[0]):
        return float(s[0]), float(t[0])
    return None


def chain(ctx, name: str, through_relu: bool = False) -> list[tuple[str, object, bool]]:
    """[(node, g, nonlinear)] from `name` up through table nodes and uniform affines (and ReLU /
    Clip nodes when `through_relu`): the value of `name` is g(value of node); `nonlinear` says
    whether a table or ReLU lies between them."""
    out = [(name, _identity, False)]
    cur, g, nonlinear = name, _identity, False
    while True:
        d = ctx.fg[cur]
        op = d["op"]
        if op == TABLE:
            f = d["params"]["fn"]
            g = (lambda g, f: lambda z: g(f(z)))(g, f)
            nonlinear = True
        elif op == "affine" and _uniform(d) is not None:
            s, t = _uniform(d)
            g = (lambda g, s, t: lambda z: g(s * z + t))(g, s, t)
        elif op == "relu" and through_relu:
            hi = d["params"]["hi"]
            g = (lambda g, hi: lambda z: g(np.clip(z, 0.0, np.inf if hi is None else hi)))(g, hi)
            nonlinear = True
        else:
            return out
        (cur,) = d["inputs"]
        out.append((cur, g, nonlinear))


def unary(node, ctx, f, expr: str, bounds=None, x_name: str | None = None,
          activation: bool = True) -> str:
    """A table of f(x), composed with x's own table/uniform-affine chain when it has one; x is
    the node's first input unless `x_name` is given."""
    x = ctx.tensor(node, x_name or node.input[0])
    links = chain(ctx, x)
    root, g, _ = links[-1]
    return add_table(node, ctx, root, (lambda f, g: lambda z: f(g(z)))(f, g), expr, bounds,
                     activation or _activation(ctx, links, root))


def compose_affine(node, ctx, x: str, scale: float, shift: float) -> bool:
    """y = scale·x + shift on a table x: a new table on x's input. False if x is no table."""
    d = ctx.fg[x]
    if d["op"] != TABLE:
        return False
    f = d["params"]["fn"]
    (root,) = d["inputs"]
    b = d["params"].get("bounds")
    if b is not None:
        b = tuple(sorted((scale * b[0] + shift, scale * b[1] + shift)))
    add_table(node, ctx, root, (lambda f, s, t: lambda z: s * f(z) + t)(f, scale, shift),
              f"{scale:g}·({d['params']['expr']}) + {shift:g}", b,
              not d["params"].get("internal"))
    return True


BINARY = {"Mul": np.multiply, "Div": np.divide, "Add": np.add, "Sub": np.subtract}


def combine(node, ctx, op: str) -> bool:
    """Binary op on two tensors that are functions of one common tensor: one table. Add and Sub
    combine only when a nonlinearity is involved (a linear join stays a spiking Add)."""
    return combine_n(node, ctx, list(node.input), BINARY[op], linear_ok=op in ("Mul", "Div"))


def combine_n(node, ctx, inputs: list[str], op, linear_ok: bool = True, synthetic=False) -> bool:
    """op(g_1(x), …, g_n(x)) for tensor inputs that are all functions of one tensor x (scalar
    constants allowed among them): one table on x. False if they share no such x."""
    tensors = [i for i in inputs if ctx.const(i) is None]
    if not tensors:
        return False
    chains = [chain(ctx, ctx.tensor(node, i), through_relu=True) for i in tensors]
    common = set.intersection(*({n for n, _, _ in c} for c in chains))
    # the nearest common tensor: the first one met walking up the first operand's chain
    root = next((n for n, _, _ in chains[0] if n in common), None)
    if root is None:
        return False
    fns, nonlinear = {}, False
    for name, c in zip(tensors, chains):
        _, g, nl = next(link for link in c if link[0] == root)
        fns[name], nonlinear = g, nonlinear or nl
    # SiLU's x·sigmoid(x) is an activation; a polynomial of x (c·c) is arithmetic
    activation = any(_activation(ctx, c, root) for c in chains)
    if not (linear_ok or nonlinear):
        return False
    for i in inputs:
        if i not in fns:
            v = np.asarray(ctx.const(i), np.float64)
            if v.size != 1:
                ctx.fail(node, f"constant operand {i!r} of shape {v.shape} is not a scalar")
            fns[i] = (lambda v: lambda z: np.full(np.shape(z), v))(float(v.reshape(-1)[0]))
    parts = [fns[i] for i in inputs]
    fn = (lambda op, parts: lambda z: op(*[g(z) for g in parts]))(op, parts)
    if synthetic:
        ctx.add(node, TABLE, [root], fn=fn, expr=f"{node.op_type} of {root}", bounds=None,
                synthetic=True)
    else:
        add_table(node, ctx, root, fn, f"{node.op_type} of {root}", activation=activation)
    return True


# --- the ops -------------------------------------------------------------------------------------

def _sigmoid(z):
    return special.expit(z)


def _softplus(z):
    return np.logaddexp(0.0, z)


@converter("Sigmoid")
def sigmoid(node, ctx):
    unary(node, ctx, _sigmoid, "sigmoid", (0.0, 1.0))


@converter("HardSigmoid")
def hard_sigmoid(node, ctx):
    a, b = ctx.attr(node, "alpha", 0.2), ctx.attr(node, "beta", 0.5)
    unary(node, ctx, lambda z: np.clip(a * z + b, 0.0, 1.0), f"hardsigmoid({a:g}, {b:g})",
          (0.0, 1.0))


@converter("HardSwish")
def hard_swish(node, ctx):
    unary(node, ctx, lambda z: z * np.clip(z / 6.0 + 0.5, 0.0, 1.0), "hardswish")


@converter("Tanh")
def tanh(node, ctx):
    unary(node, ctx, np.tanh, "tanh", (-1.0, 1.0))


@converter("Erf")
def erf(node, ctx):
    unary(node, ctx, special.erf, "erf", (-1.0, 1.0))


@converter("Gelu")
def gelu(node, ctx):
    approx = ctx.attr(node, "approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    if approx == "tanh":
        f = lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    else:
        f = lambda z: 0.5 * z * (1 + special.erf(z / np.sqrt(2)))
    unary(node, ctx, f, f"gelu({approx})")


@converter("LeakyRelu")
def leaky_relu(node, ctx):
    a = ctx.attr(node, "alpha", 0.01)
    unary(node, ctx, lambda z: np.where(z >= 0, z, a * z), f"leakyrelu({a:g})")


@converter("Elu")
def elu(node, ctx):
    a = ctx.attr(node, "alpha", 1.0)
    unary(node, ctx, lambda z: np.where(z > 0, z, a * np.expm1(np.minimum(z, 0))), f"elu({a:g})")


@converter("Softplus")
def softplus(node, ctx):
    unary(node, ctx, _softplus, "softplus")


@converter("Mish")
def mish(node, ctx):
    unary(node, ctx, lambda z: z * np.tanh(_softplus(z)), "mish")


@converter("Pow")
def power(node, ctx):
    p = ctx.need_const(node, 1, "the exponent")
    if np.size(p) != 1:
        ctx.fail(node, "only a scalar constant exponent is supported")
    p = float(np.asarray(p).reshape(-1)[0])
    if p == int(p):
        f = (lambda z: np.power(z, int(p))) if p >= 0 else (lambda z: np.power(z, p))
    elif p > 0:     # a fractional power of max(x, 0), as Sqrt: negative x has no real power
        f = lambda z: np.power(np.maximum(z, 0.0), p)
    else:           # and of the smallest positive float at x ≤ 0 (the table's range clips it)
        f = lambda z: np.power(np.where(z > 0, z, np.finfo(np.float64).tiny), p)
    unary(node, ctx, f, f"x^{p:g}", activation=False)


@converter("Exp")
def exp(node, ctx):
    unary(node, ctx, lambda z: np.exp(np.minimum(z, 700.0)), "exp", (0.0, np.inf),
          activation=False)


@converter("Sqrt")
def sqrt(node, ctx):
    unary(node, ctx, lambda z: np.sqrt(np.maximum(z, 0.0)), "sqrt", (0.0, np.inf),
          activation=False)


@converter("Reciprocal")
def reciprocal(node, ctx):
    divide_constant(node, ctx, 1.0)


def divide_constant(node, ctx, c: float, x_name: str | None = None) -> None:
    """c / x for a tensor x (the node's first input unless `x_name`): a table. At x = 0 the
    value is c / (smallest positive float), which the table's output range clips."""
    unary(node, ctx, lambda z: c / np.where(z == 0, np.finfo(np.float64).tiny, z),
          f"{c:g}/x", x_name=x_name, activation=False)


@converter("Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Equal")
def compare(node, ctx):
    """A comparison of a function of x with a constant (torch's Softplus threshold): a boolean
    function of x that only a Where may read (it carries no float value calibration can see)."""
    op = {"Greater": np.greater, "Less": np.less, "GreaterOrEqual": np.greater_equal,
          "LessOrEqual": np.less_equal, "Equal": np.equal}[node.op_type]
    if not combine_n(node, ctx, list(node.input), lambda a, b: op(a, b).astype(np.float64),
                     synthetic=True):
        ctx.fail(node, "a comparison is supported only between functions of one tensor and "
                       "constants, as the condition of a Where")


@converter("Where")
def where(node, ctx):
    """Where(c(x), a(x), b(x)) of functions of one tensor x: one table."""
    if not combine_n(node, ctx, list(node.input), lambda c, a, b: np.where(c != 0, a, b)):
        ctx.fail(node, "Where is supported only when its condition and both branches are "
                       "functions of one tensor (or constants)")
