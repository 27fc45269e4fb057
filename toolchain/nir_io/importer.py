"""A NIR graph (snnTorch, Norse, sinabs) → an SFN artifact of binary spiking neurons run for T > 1
steps: `compile_nir(path, calib, timesteps, dt)`.

Accepted: a chain Input → … → Output of Conv2d / Affine / Linear (weights), Scale (folded into
the weights before it), SumPool2d / AvgPool2d, Flatten, IF and LIF neurons. Each weight layer
feeds a neuron layer or the Output.

Equations. NIR's LIF, τ·dv/dt = (v_leak − v) + R·I, discretized with the producer's step dt
(snnTorch writes τ = dt/(1 − β) with dt = 1e-4, the default), is
v ← v + a·(v_leak + R·I − v), a = dt/τ, fire when v > v_threshold, then reset. The SFN neuron
with leak d is v ← v + floor(d·(I + b − v)/4096), fire when v ≥ θ, v ← v − θ (sim.semantics,
levels [0, 1], start "zero"). So d = round(4096·a) — a is rounded to a multiple of 1/4096 (for
β = 0.9 exactly 0.1 ≈ 410/4096: β becomes 0.89990) and the floor costs less than one state unit
a step. IF (dv/dt = R·I, one unit of time per step) is d = 4096: v ← v + I + b.
Per output channel c a gain g_c maps NIR's state to integers: weights W_int·2^e = g_c·R·W·m
(8-bit mantissas, m the value of one unit of the layer's input: 1/inv_scale for the encoder's
integers, 1 for spikes, 1/(k_h·k_w) behind an average pool), bias b = g_c·(R·b_syn + v_leak),
θ = g_c·v_threshold; g_c is as large as the 8-bit mantissas and the 24-bit state allow, so θ is
at least 2^12 where it can be. Every rounding is reported in the artifact's notes.

Reset: NIR says v ← v_reset (0 is accepted) on a spike; the SFN neuron subtracts the threshold,
which is what snnTorch's Leaky (reset_mechanism "subtract", its default) and sinabs' IAF do, so
their NIR files mean it; a network trained with reset to zero is compiled with subtraction
(a note says so). snnTorch's default reset_delay=True subtracts the threshold one step late;
the SFN neuron subtracts it at once (reset_delay=False). The input is NIR's input signal, the
same every step of a sample, encoded n = clip(floor(x·inv_scale + 1/2), lo, hi) with inv_scale
from the calibration data. The readout: the Output's input summed over the T steps and divided
by T — spike rates behind a neuron layer, the mean of the Affine's output behind an Affine.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import sim.cpu
from sim import semantics
from sim.artifact import Artifact
from sim.files import describe_missing
from sim.ops import Conv, Dense, Input, Neuron, Readout, Reshape, SumPool
from toolchain import calibrate as cal
from toolchain.compiled import Compiled, agreement, place
from toolchain.errors import InputFileError, ModelError, QuantizationError, UnsupportedOpError
from toolchain.quantize.tensor import LayerRow

DEFAULT_DT = 1e-4          # snnTorch's NIR time step
DEFAULT_TIMESTEPS = 16
THETA_TARGET = 2 ** 12     # the smallest threshold the gains aim for
STATE_HEADROOM = 2 ** 22   # θ + the largest current + |bias| must stay below this
MAX_WEIGHT_EXP = 24
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
WEIGHTS = ("Conv2d", "Affine", "Linear")
NEURONS = ("IF", "LIF")


def is_nir(path: str | os.PathLike) -> bool:
    """A `.nir` file, or any HDF5 file (NIR is stored as HDF5)."""
    p = Path(path)
    if p.suffix.lower() == ".nir":
        return True
    if not p.is_file():   # a FIFO's open would block: the ONNX reader names what it is
        return False
    try:
        with open(p, "rb") as f:
            return f.read(8) == HDF5_MAGIC
    except OSError:
        return False


def read_graph(path: str | os.PathLike):
    try:
        import nir
    except ImportError:
        raise ModelError("compiling NIR needs the `nir` package: pip install nir") from None
    if not Path(path).is_file():
        raise InputFileError(describe_missing(path, "NIR file"))
    try:
        return nir.read(str(path))
    except Exception as exc:   # h5py/nir raise many kinds for a file that is not NIR
        raise ModelError(f"{path}: not a readable NIR graph ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None


def _chain(graph, path) -> list[tuple[str, object]]:
    """The graph's nodes from Input to Output, each reading the one before; refused otherwise."""
    kinds = {k: type(v).__name__ for k, v in graph.nodes.items()}
    inputs = [k for k, t in kinds.items() if t == "Input"]
    outputs = [k for k, t in kinds.items() if t == "Output"]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedOpError(f"{path}: {len(inputs)} Input and {len(outputs)} Output nodes; "
                                 "a NIR graph compiles with one of each")
    succ: dict[str, list[str]] = {k: [] for k in graph.nodes}
    pred: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for a, b in graph.edges:
        if a not in succ or b not in succ:
            raise ModelError(f"{path}: edge ({a!r}, {b!r}) names a node the graph lacks")
        succ[a].append(b)
        pred[b].append(a)
    order, node = [], inputs[0]
    while True:
        order.append(node)
        if node == outputs[0]:
            break
        if len(succ[node]) != 1 or len(pred[succ[node][0]]) != 1:
            raise UnsupportedOpError(
                f"{path}: node {node!r} ({kinds[node]}) feeds {succ[node]}; a NIR graph "
                "compiles when every node reads the one before it (a chain, no branches, no "
                "recurrent edges)")
        node = succ[node][0]
        if node in order:
            raise UnsupportedOpError(f"{path}: node {node!r} is on a cycle (recurrence)")
    left = sorted(set(graph.nodes) - set(order))
    if left:
        raise UnsupportedOpError(f"{path}: nodes {left} are not on the Input → Output chain")
    return [(k, graph.nodes[k]) for k in order]


def _arr(v) -> np.ndarray:
    return np.asarray(v.detach().numpy() if hasattr(v, "detach") else v, np.float64)


def _pair(v) -> tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    return (int(a[0]), int(a[0])) if a.size == 1 else (int(a[0]), int(a[1]))


def _per_channel(values: np.ndarray, shape: tuple[int, ...], what: str, where: str) -> np.ndarray:
    """A neuron parameter (scalar, per channel or per neuron) as one value per channel."""
    full = np.broadcast_to(np.asarray(values, np.float64), shape) if np.size(values) != \
        int(np.prod(shape)) else np.asarray(values, np.float64).reshape(shape)
    per = full.reshape(shape[0], -1)
    if np.any(per != per[:, :1]):
        raise UnsupportedOpError(f"{where}: {what} varies within a channel; the SFN neuron "
                                 "keeps one per channel")
    return per[:, 0]


def compile_nir(path: str | os.PathLike, calib: np.ndarray | None = None,
                timesteps: int | None = None, dt: float = DEFAULT_DT,
                target: str = "loihi2", progress=None) -> Compiled:
    """Compile the NIR graph at `path` (module docstring); `calib` (N, *input_shape) sets the
    input encoder's range and measures the agreement with the float NIR network;
    `timesteps` is T stored in the artifact (default: the graph's `sfn_timesteps`, else 16)."""
    say = progress or (lambda stage: None)
    say("import")
    graph = read_graph(path)
    chain = _chain(graph, path)
    if not (np.isfinite(dt) and dt > 0):
        raise QuantizationError(f"dt = {dt}: must be a finite number > 0")
    meta = getattr(graph, "metadata", None) or {}
    T = int(timesteps or np.asarray(meta.get("sfn_timesteps", DEFAULT_TIMESTEPS)))
    layers = _float_layers(chain, path, dt)
    input_shape = layers[0]["shape"]
    notes = []
    say("calibrate")
    if calib is None:
        data = cal.fallback_data(input_shape)
        notes.append(f"calibration none given: the input range comes from {len(data)} samples "
                     "of N(0, 1); pass --calib")
    else:
        data = cal.check_data(np.asarray(calib), input_shape, "calibration data")
    say("quantize")
    nodes, rows, more = _quantize(layers, data, path)
    notes += more
    notes.append(f"time step dt = {dt:g} (LIF: a = dt/τ); T = {T}; NIR's reset to v_reset = 0 "
                 "compiles as reset by subtraction (docs/nir.md)")
    meta = {"source": {"file": Path(path).name, "format": "nir"},
            "levels": 1, "timesteps": int(T),
            "calibration": f"{len(data)} samples (input range)", "notes": notes,
            "layers": [r.to_json() for r in rows], "fire": "uniform",
            "scale": {"lambda": 1.0, "search": None}}
    art = Artifact(nodes, "input", "output", meta, {})
    art.validate()
    say("map")
    place(art, target)
    say("agreement")
    float_out = simulate_float(layers, data, T)
    snn = sim.cpu.run(art, data, timesteps=T, count=False)
    result = Compiled(art, None, rows, notes)
    result.agreement = agreement(float_out, snn.output)
    art.meta["agreement"] = result.agreement
    return result


def _float_layers(chain, path, dt: float) -> list[dict]:
    """The chain as float layers with shapes; Scale folded into the weights before it."""
    layers: list[dict] = []
    shape: tuple[int, ...] = ()
    for key, node in chain:
        kind = type(node).__name__
        where = f"{path}: node {key!r} ({kind})"
        if kind == "Input":
            shape = tuple(int(d) for d in np.asarray(list(node.input_type.values())[0]).reshape(-1))
            layers.append(dict(op="input", key=key, shape=shape))
        elif kind == "Output":
            layers.append(dict(op="output", key=key, shape=shape))
        elif kind == "Conv2d":
            w = _arr(node.weight)
            if len(shape) != 3 or w.ndim != 4:
                raise UnsupportedOpError(f"{where}: a 2-D convolution of a (C, H, W) input "
                                         f"(input {shape}, weight {w.shape})")
            if isinstance(node.padding, str):
                if node.padding == "valid":
                    pad = (0, 0)
                else:
                    raise UnsupportedOpError(f"{where}: padding 'same'; give it as numbers")
            else:
                pad = _pair(node.padding)
            stride, dil = _pair(node.stride), _pair(node.dilation)
            kh, kw = w.shape[2:]
            out_hw = [(shape[1 + i] + 2 * pad[i] - dil[i] * ((kh, kw)[i] - 1) - 1) // stride[i] + 1
                      for i in range(2)]
            b = _arr(node.bias) if node.bias is not None else np.zeros(w.shape[0])
            shape = (w.shape[0], *out_hw)
            layers.append(dict(op="conv", key=key, shape=shape, W=w, b=b.reshape(-1) * np.ones(w.shape[0]),
                               stride=stride, pads=(pad[0], pad[1], pad[0], pad[1]),
                               dilation=dil, groups=int(node.groups)))
        elif kind in ("Affine", "Linear"):
            w = _arr(node.weight)
            if w.ndim != 2 or len(shape) != 1 or w.shape[1] != shape[0]:
                raise UnsupportedOpError(f"{where}: weight {w.shape} does not map the input "
                                         f"{shape} (flatten it first)")
            b = _arr(node.bias) if kind == "Affine" else np.zeros(w.shape[0])
            shape = (w.shape[0],)
            layers.append(dict(op="dense", key=key, shape=shape, W=w, b=b))
        elif kind == "Scale":
            prev = layers[-1] if layers else None
            if prev is None or prev["op"] not in ("conv", "dense"):
                raise UnsupportedOpError(f"{where}: a Scale compiles after a Conv2d or Affine "
                                         "(it is folded into their weights)")
            s = _per_channel(_arr(node.scale), shape, "the scale", where)
            prev["W"] = prev["W"] * s.reshape((-1,) + (1,) * (prev["W"].ndim - 1))
            prev["b"] = prev["b"] * s
        elif kind in ("SumPool2d", "AvgPool2d"):
            k, st, pad = _pair(node.kernel_size), _pair(node.stride), _pair(node.padding)
            if len(shape) != 3:
                raise UnsupportedOpError(f"{where}: pooling of a (C, H, W) input, got {shape}")
            if kind == "AvgPool2d" and pad != (0, 0):
                raise UnsupportedOpError(f"{where}: average pooling with padding (its divisor "
                                         "would vary at the border)")
            shape = (shape[0], (shape[1] + 2 * pad[0] - k[0]) // st[0] + 1,
                     (shape[2] + 2 * pad[1] - k[1]) // st[1] + 1)
            layers.append(dict(op="pool", key=key, shape=shape, kernel=k, stride=st,
                               pads=(pad[0], pad[1], pad[0], pad[1]),
                               divisor=float(k[0] * k[1]) if kind == "AvgPool2d" else 1.0))
        elif kind == "Flatten":
            shape = (int(np.prod(shape)),)
            layers.append(dict(op="flatten", key=key, shape=shape))
        elif kind in NEURONS:
            thr = _per_channel(_arr(node.v_threshold), shape, "v_threshold", where)
            r = _per_channel(_arr(node.r), shape, "r", where)
            reset = _arr(node.v_reset) if node.v_reset is not None else np.zeros(1)
            if np.any(reset != 0):
                raise UnsupportedOpError(f"{where}: v_reset ≠ 0; the SFN neuron resets by "
                                         "subtracting its threshold")
            if np.any(thr <= 0):
                raise UnsupportedOpError(f"{where}: a threshold ≤ 0")
            if kind == "LIF":
                tau = _arr(node.tau).reshape(-1)
                leak = _arr(node.v_leak)
                a = dt / tau
                if np.any(a != a[0]):
                    raise UnsupportedOpError(f"{where}: τ differs between neurons; the SFN "
                                             "neuron has one leak per layer")
                a = float(a[0])
                if not 0 < a <= 1:
                    raise UnsupportedOpError(f"{where}: dt/τ = {a:g} is outside (0, 1]; is dt "
                                             "right (--dt)?")
                v_leak = _per_channel(leak, shape, "v_leak", where)
            else:
                a, v_leak = None, np.zeros(shape[0])
            layers.append(dict(op="neuron", key=key, kind=kind, shape=shape, thr=thr, r=r,
                               a=a, v_leak=v_leak))
        else:
            raise UnsupportedOpError(f"{where}: no SFN mapping (compiled: Input, Output, Conv2d, "
                                     "Affine, Linear, Scale, SumPool2d, AvgPool2d, Flatten, IF, "
                                     "LIF; docs/nir.md)")
    for i, layer in enumerate(layers[:-1]):
        nxt = layers[i + 1]
        if layer["op"] in ("conv", "dense") and nxt["op"] not in ("neuron", "output"):
            raise UnsupportedOpError(f"{path}: node {layer['key']!r} feeds {nxt['key']!r} "
                                     f"({nxt['op']}); a weight layer compiles when it feeds a "
                                     "neuron layer or the Output")
        if layer["op"] == "neuron" and nxt["op"] == "neuron":
            raise UnsupportedOpError(f"{path}: neuron layer {layer['key']!r} feeds neuron layer "
                                     f"{nxt['key']!r} directly")
    if layers[-2]["op"] not in ("neuron", "dense", "conv"):
        raise UnsupportedOpError(f"{path}: the Output reads {layers[-2]['op']} "
                                 f"{layers[-2]['key']!r}; it compiles behind a neuron layer or "
                                 "a weight layer")
    for layer in layers:
        if layer["op"] == "neuron":
            prev = layers[layers.index(layer) - 1]
            if prev["op"] not in ("conv", "dense"):
                raise UnsupportedOpError(f"{path}: neuron layer {layer['key']!r} reads "
                                         f"{prev['op']} {prev['key']!r}; it compiles behind a "
                                         "Conv2d or Affine (which carry its gain)")
    return layers


def _mantissas(w_eff: np.ndarray):
    """8-bit mantissas per output channel: even in [−256, 254] for mixed signs (Lava drops the
    lowest bit), [0, 255] or [−255, 0] otherwise; returns (max mantissa, per-channel max |w|)."""
    mixed = bool(np.any(w_eff > 0) and np.any(w_eff < 0))
    top = np.abs(w_eff).reshape(len(w_eff), -1).max(axis=1)
    return (254 if mixed else 255), np.where(top > 0, top, 1.0), mixed


def _quantize(layers, data, path):
    """The SFN nodes, the compiler's rows and notes for the float layers and calibration data."""
    inp = layers[0]
    top = float(np.max(np.abs(data))) if data.size else 1.0
    signed = bool(np.min(data) < 0)
    hi = 127 if signed else 255
    lo = -127 if signed else 0
    step = cal.grid_step(data, hi)
    inv_scale = float(1.0 / step) if step else float(hi / max(top, 1e-12))
    nodes = [Input("input", (), inp["shape"], inv_scale=inv_scale, lo=lo, hi=hi)]
    rows = [LayerRow("input", "input", inp["shape"], neurons=int(np.prod(inp["shape"])),
                     levels=(lo, hi), detail="grid" if step else "")]
    notes = [f"input encoding: inv_scale {inv_scale:g}, levels [{lo}, {hi}]" +
             (" (lossless: the calibration inputs lie on its grid)" if step else "")]
    unit = 1.0 / inv_scale          # the float value of one integer unit of the current signal
    bound = float(max(abs(lo), hi))  # the largest integer the current signal reaches
    prev = "input"
    decays = []
    for i, layer in enumerate(layers[1:-1], start=1):
        op, key, shape = layer["op"], str(layer["key"]), layer["shape"]
        if op == "pool":
            node = SumPool(f"{key}", (prev,), shape, kernel=layer["kernel"],
                           stride=layer["stride"], pads=layer["pads"])
            unit /= layer["divisor"]
            bound *= layer["kernel"][0] * layer["kernel"][1]
            rows.append(LayerRow(key, "sumpool", shape))
        elif op == "flatten":
            node = Reshape(key, (prev,), shape)
        elif op in ("conv", "dense"):
            nxt = layers[i + 1]
            node, gain, row = _weights(layer, nxt, unit, bound, prev, path)
            rows.append(row)
            nodes.append(node)
            prev = node.name
            if nxt["op"] == "neuron":
                neuron, row, note = _neuron(nxt, gain, node, layer["b"])
                nodes.append(neuron)
                rows.append(row)
                if note:
                    decays.append(note)
                prev = neuron.name
                unit, bound = 1.0, 1.0
            else:      # the Output reads this weight layer's current
                readout_gain, readout_b = gain, layer["b"]
            continue
        elif op == "neuron":
            continue    # built with the weight layer before it
        nodes.append(node)
        prev = node.name
    out_shape = layers[-1]["shape"]
    last = layers[-2]
    if last["op"] == "neuron":
        readout = Readout("output", (prev,), out_shape, scale=np.ones(out_shape, np.float32),
                          bias=np.zeros(out_shape, np.int64))
    else:
        cshape = (-1,) + (1,) * (len(out_shape) - 1)
        scale = (1.0 / readout_gain).reshape(cshape)
        bias = np.rint(readout_b * readout_gain).reshape(cshape)
        readout = Readout("output", (prev,), out_shape,
                          scale=np.broadcast_to(scale, out_shape).astype(np.float32),
                          bias=np.broadcast_to(bias, out_shape).astype(np.int64))
    nodes.append(readout)
    notes += decays
    return nodes, rows, notes


def _weights(layer, nxt, unit: float, bound: float, prev: str, path):
    """The weight node of `layer` and its per-channel gain g (integer current per unit of NIR's
    neuron drive R·I)."""
    key = str(layer["key"])
    r = nxt["r"] if nxt["op"] == "neuron" else np.ones(layer["W"].shape[0])
    w_eff = layer["W"] * (r * unit).reshape((-1,) + (1,) * (layer["W"].ndim - 1))
    kmax, top, mixed = _mantissas(w_eff)
    thr = nxt["thr"] if nxt["op"] == "neuron" else None
    drive = np.abs(layer["b"] * r) + (np.abs(nxt["v_leak"]) if nxt["op"] == "neuron" else 0)
    absum = np.abs(w_eff).reshape(len(w_eff), -1).sum(axis=1)

    def state(exp: int) -> tuple[np.ndarray, float]:
        gain = kmax * 2 ** exp / top
        peak = gain * (absum * bound + drive) + (gain * thr if thr is not None else 0)
        return gain, float(peak.max())

    exp = 0
    if thr is not None:
        while exp < MAX_WEIGHT_EXP and (state(exp)[0] * thr).min() < THETA_TARGET and \
                state(exp + 1)[1] <= STATE_HEADROOM:
            exp += 1
    gain, peak = state(exp)
    if peak > STATE_HEADROOM * 2:
        raise QuantizationError(f"{path}: layer {key!r}: the input current reaches "
                                f"{peak:.3g} state units with 8-bit weights, beyond the 24-bit "
                                "state")
    scaled = w_eff * (gain / 2 ** exp).reshape((-1,) + (1,) * (w_eff.ndim - 1))
    w_int = (2 * np.rint(scaled / 2) if mixed else np.rint(scaled)).astype(np.int64)
    if layer["op"] == "conv":
        node = Conv(key, (prev,), layer["shape"], weight=w_int.astype(np.int16), weight_exp=exp,
                    stride=tuple(layer["stride"]), pads=tuple(layer["pads"]),
                    dilation=tuple(layer["dilation"]), groups=layer["groups"])
    else:
        node = Dense(key, (prev,), layer["shape"], weight=w_int.astype(np.int16),
                     weight_exp=exp)
    row = LayerRow(key, node.kind, tuple(layer["shape"]), synapses=int(w_int.size),
                   weight_bits=8, weight_exp=exp)
    return node, gain, row


def _neuron(layer, gain: np.ndarray, synapse, b_syn: np.ndarray):
    """The SFN neuron of an IF/LIF layer behind `synapse` (float bias `b_syn`), whose current
    carries `gain` per channel."""
    key, shape = str(layer["key"]), tuple(layer["shape"])
    cshape = (-1,) + (1,) * (len(shape) - 1)
    theta = np.maximum(np.rint(gain * layer["thr"]), 1).astype(np.int64).reshape(cshape)
    bias = np.rint(gain * (layer["r"] * b_syn + layer["v_leak"])) \
        .astype(np.int64).reshape(cshape)
    note = None
    if layer["a"] is None:
        decay = semantics.LEAK_ONE
    else:
        decay = int(np.clip(np.rint(layer["a"] * semantics.LEAK_ONE), 1, semantics.LEAK_ONE))
        note = (f"layer {key!r} (LIF): dt/τ = {layer['a']:.6g} → leak {decay}/4096 "
                f"(β {1 - layer['a']:.6g} → {1 - decay / semantics.LEAK_ONE:.6g})")
    node = Neuron(key, (synapse.name,), shape, threshold=theta, bias=bias, lo=0, hi=1,
                  decay=decay, start="zero")
    row = LayerRow(key, "neuron", shape, neurons=int(np.prod(shape)), levels=(0, 1),
                   threshold=(int(theta.min()), int(theta.max())),
                   detail=layer["kind"] + ("" if decay == semantics.LEAK_ONE else f" d{decay}"))
    return node, row, note


def simulate_float(layers, x: np.ndarray, timesteps: int) -> np.ndarray:
    """The NIR network in float64 (the discretization of the module docstring, reset by
    subtraction, v = 0 at a sample's start): the readout of `compile_nir`, for its agreement."""
    import torch

    v = {}
    total = 0.0
    with torch.no_grad():
        for _ in range(timesteps):
            h = torch.from_numpy(np.asarray(x, np.float64))
            for i, layer in enumerate(layers[1:-1], start=1):
                op = layer["op"]
                if op == "conv":
                    h = torch.nn.functional.conv2d(
                        h, torch.from_numpy(layer["W"]), torch.from_numpy(layer["b"]),
                        layer["stride"], (layer["pads"][0], layer["pads"][1]),
                        layer["dilation"], layer["groups"])
                elif op == "dense":
                    h = h @ torch.from_numpy(layer["W"]).T + torch.from_numpy(layer["b"])
                elif op == "pool":
                    k = layer["kernel"]
                    h = torch.nn.functional.avg_pool2d(
                        h, k, layer["stride"], (layer["pads"][0], layer["pads"][1]),
                        count_include_pad=True) * (k[0] * k[1] / layer["divisor"])
                elif op == "flatten":
                    h = h.reshape(len(h), -1)
                else:
                    cshape = (-1,) + (1,) * (len(layer["shape"]) - 1)
                    r = torch.from_numpy(layer["r"].reshape(cshape))
                    thr = torch.from_numpy(layer["thr"].reshape(cshape))
                    leak = torch.from_numpy(layer["v_leak"].reshape(cshape))
                    state = v.get(i, torch.zeros_like(h))
                    if layer["a"] is None:
                        state = state + r * h
                    else:
                        state = state + layer["a"] * (leak + r * h - state)
                    spikes = (state >= thr).double()
                    v[i] = state - spikes * thr
                    h = spikes
            total = total + h
    return (total / timesteps).numpy().astype(np.float32)
