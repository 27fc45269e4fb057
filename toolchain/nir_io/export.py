"""An SFN artifact → a NIR graph (Neuromorphic Intermediate Representation): its T > 1
integrate-and-fire form, the one `sim.cpu.run(art, x, timesteps=T, binary=True)` runs.

Mapping (node names become identifiers `<kind>_<index>`; `sfn_name` in each node's metadata
keeps the artifact's name):

- input → `Input`; NIR's input is the encoder's integers n = clip(floor(x·inv_scale + 1/2),
  lo, hi), the same every step of a sample (metadata `sfn_encoder`, `sfn_inv_scale`, `sfn_lo`,
  `sfn_hi`);
- conv / dense → `Conv2d` / `Affine`, weights W·2^weight_exp·K (integers: the mantissas, their
  exponent and the spike unit K of the layer that feeds them, since a binary spike of the
  SFN neuron carries K; a negative exponent only where W·K is a multiple of 2^−e, so that the
  accumulator's floor is exact), biases the integer bias of the neuron they feed (or the readout's);
- neuron (uniform fire, no leak, reset by subtraction, levels [0, K]) → `IF` with r = 1 and
  v_threshold = K·θ (integers, per neuron);
- sumpool → `SumPool2d`; a reshape to one axis → `Flatten`;
- readout → `Output`, with `sfn_scale` and `sfn_timesteps`: the float readout is
  y = float32(Σ_t out_t) · float32(scale / T), out_t the last Affine's output at step t.

What NIR's IF does not say is carried in its metadata and differs from a consumer that reads
NIR's equations alone (docs/nir.md gives the measured difference):
`sfn_reset` = "subtract" (v ← v − K·θ on a spike; NIR's IF resets to v_reset), `sfn_fires_when`
= "v >= v_threshold" (NIR: v > v_threshold; on integers the same as v > v_threshold − 1/2),
`sfn_v_initial` = (K·θ)//2 (the state a sample starts from; NIR starts at 0), `sfn_state_bits`
= 24 (the state saturates at ±(2²³ − 1)). A consumer that starts the membrane at
v_initial + 1/2 and resets by subtraction reproduces sim.cpu exactly, as long as no state
saturates. Every node NIR cannot express (multi-level or signed neurons, payload tables, leaky
or non-resetting neurons, a negative weight exponent that floors, max-pool, add, concatenation,
transpose, other reshapes, asymmetric padding, a bias with no conv/dense to carry it) is named in
one error; nothing is dropped.
"""
from __future__ import annotations

import io
import os

import numpy as np

from sim import semantics
from sim.artifact import Artifact, atomic_write
from toolchain.errors import ToolchainError

ENCODER = "n = clip(floor(x * inv_scale + 1/2), lo, hi), every step of a sample"
READOUT = "y = float32(sum over the T steps of output) * float32(scale / T)"


class NIRExportError(ToolchainError):
    """The artifact holds nodes NIR cannot express."""


def _nir():
    try:
        import nir
    except ImportError:
        raise ToolchainError("NIR export needs the `nir` package: pip install nir") from None
    return nir


def _symmetric(pads, where: str, problems: list) -> tuple[int, int]:
    top, left, bottom, right = (int(p) for p in pads)
    if (top, left) != (bottom, right):
        problems.append(f"{where}: padding {tuple(pads)} is not symmetric (NIR pads both sides "
                        "alike)")
    return top, left


def to_nir(art: Artifact, timesteps: int | None = None):
    """The NIR graph (nir.NIRGraph) of `art`'s binary T-step form; raises NIRExportError naming
    every node NIR cannot express."""
    nir = _nir()
    if art.recurrent:
        raise NIRExportError("a recurrent artifact (a Delay node) has no NIR export: NIR "
                             "graphs here are feed-forward integrate-and-fire networks")
    T = int(art.meta.get("timesteps", 1)) if timesteps is None else int(timesteps)
    consumers: dict[str, list[str]] = {n.name: [] for n in art.nodes}
    for n in art.nodes:
        for i in n.inputs:
            consumers[i].append(n.name)
    by_name = {n.name: n for n in art.nodes}
    names = {n.name: ("input" if n.role == "source" else "output" if n.role == "sink"
                      else f"{'if' if n.kind == 'neuron' else n.kind}_{i}")
             for i, n in enumerate(art.nodes)}
    unit: dict[str, int] = {}          # K: what one NIR unit of a node's value is worth
    bias_of: dict[str, np.ndarray] = {}  # conv/dense name → the bias it carries
    problems: list[str] = []
    for n in art.nodes:                # biases first: a neuron's or the readout's
        if n.kind not in ("neuron", "readout"):
            continue
        bias = np.broadcast_to(np.asarray(n.bias, np.int64), n.shape)
        src = by_name[n.inputs[0]]
        if src.kind in ("conv", "dense") and consumers[src.name] == [n.name]:
            bias_of[src.name] = bias
        elif np.any(bias):
            problems.append(f"node {n.name!r} ({n.kind}): a bias fed by {src.kind} "
                            f"{src.name!r}, which has no bias of its own in NIR")
    nodes, edges = {}, []
    for n in art.nodes:
        where = f"node {n.name!r} ({n.kind})"
        meta = {"sfn_name": n.name}
        src_unit = unit.get(n.inputs[0], 1) if n.inputs else 1
        if n.kind in ("conv", "dense"):
            w = _integer_weights(n, src_unit, where, problems)
            if w is None:
                continue
        if n.kind == "input":
            unit[n.name] = 1
            nodes[names[n.name]] = nir.Input(
                input_type={"input": np.array(n.shape)},
                metadata={**meta, "sfn_encoder": ENCODER, "sfn_inv_scale": float(n.inv_scale),
                          "sfn_lo": int(n.lo), "sfn_hi": int(n.hi)})
        elif n.kind == "conv":
            unit[n.name] = 1
            ph, pw = _symmetric(n.pads, where, problems)
            bias = bias_of.get(n.name)
            bias = np.zeros(n.shape[0]) if bias is None else _per_channel(bias, where, problems)
            nodes[names[n.name]] = nir.Conv2d(
                input_shape=tuple(by_name[n.inputs[0]].shape[1:]), weight=w.astype(np.float32),
                stride=tuple(n.stride), padding=(ph, pw), dilation=tuple(n.dilation),
                groups=int(n.groups), bias=bias.astype(np.float32),
                metadata={**meta, "sfn_weight_exp": int(n.weight_exp),
                          "sfn_input_unit": int(src_unit)})
        elif n.kind == "dense":
            unit[n.name] = 1
            bias = bias_of.get(n.name, np.zeros(n.shape, np.int64))
            nodes[names[n.name]] = nir.Affine(
                weight=w.astype(np.float32), bias=np.asarray(bias, np.float32),
                metadata={**meta, "sfn_weight_exp": int(n.weight_exp),
                          "sfn_input_unit": int(src_unit)})
        elif n.kind == "sumpool":
            unit[n.name] = src_unit
            ph, pw = _symmetric(n.pads, where, problems)
            nodes[names[n.name]] = nir.SumPool2d(
                kernel_size=np.array(n.kernel), stride=np.array(n.stride),
                padding=np.array([ph, pw]), metadata=meta)
        elif n.kind == "reshape" and len(n.shape) == 1:
            unit[n.name] = src_unit
            nodes[names[n.name]] = nir.Flatten(
                input_type={"input": np.array(by_name[n.inputs[0]].shape)}, start_dim=0,
                end_dim=-1, metadata=meta)
        elif n.kind == "neuron":
            reason = _neuron_problem(n)
            if reason:
                problems.append(f"{where}: {reason}")
                continue
            k, _, _ = semantics.spike_unit(n.lo, n.hi, True)
            unit[n.name] = k
            step = np.broadcast_to(np.asarray(n.threshold, np.int64) * k, n.shape)
            nodes[names[n.name]] = nir.IF(
                r=np.ones(n.shape, np.float32), v_threshold=step.astype(np.float32),
                v_reset=np.zeros(n.shape, np.float32),
                metadata={**meta, "sfn_reset": "subtract", "sfn_fires_when": "v >= v_threshold",
                          "sfn_v_initial": (step // 2).astype(np.float32),
                          "sfn_spike_unit": int(k), "sfn_state_bits": semantics.STATE_BITS})
        elif n.kind == "readout":
            src = by_name[n.inputs[0]]
            if src.kind != "dense" or consumers[src.name] != [n.name]:
                problems.append(f"{where}: read from {src.kind} {src.name!r}; NIR's output "
                                "here is the last Affine's")
            nodes[names[n.name]] = nir.Output(
                output_type={"output": np.array(n.shape)},
                metadata={**meta, "sfn_readout": READOUT, "sfn_timesteps": T,
                          "sfn_scale": np.broadcast_to(np.asarray(n.scale, np.float32),
                                                       n.shape).copy(),
                          "sfn_softmax": n.softmax or "none"})
        else:
            what = "a reshape other than a flatten" if n.kind == "reshape" else \
                f"NIR has no {n.kind} node"
            problems.append(f"{where}: {what}")
            continue
        edges += [(names[i], names[n.name]) for i in n.inputs]
    if problems:
        raise NIRExportError("cannot export to NIR: " + "; ".join(problems) +
                             " (docs/nir.md lists what maps)")
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False,
                        metadata={"sfn_form": f"binary integrate-and-fire, T = {T}",
                                  "sfn_timesteps": T})


def _integer_weights(n, src_unit: int, where: str, problems: list) -> np.ndarray | None:
    """W·K·2^weight_exp as integers. A negative exponent right-shifts the accumulator with a
    floor, which NIR's weights express exactly only when every W·K is a multiple of 2^−e (even
    mantissas of a mixed-sign layer and e = −1, for one); otherwise it is a problem."""
    w = n.weight.astype(np.int64) * src_unit
    if n.weight_exp >= 0:
        return w * 2 ** n.weight_exp
    div = 2 ** -n.weight_exp
    if np.any(w % div):
        problems.append(f"{where}: weight exponent {n.weight_exp} floors the accumulator, and "
                        f"the weights are not all multiples of {div} (NIR's weights multiply "
                        "exactly)")
        return None
    return w // div


def _per_channel(bias: np.ndarray, where: str, problems: list) -> np.ndarray:
    """A conv's bias per output channel (NIR's Conv2d bias is (C_out,))."""
    per = bias.reshape(bias.shape[0], -1)
    if np.any(per != per[:, :1]):
        problems.append(f"{where}: a bias that varies within a channel")
    return per[:, 0]


def _neuron_problem(n) -> str | None:
    if n.fire != "uniform":
        return "a payload-table (adaptive) neuron"
    if n.reset != "subtract":
        return "a neuron without reset (a leaky integrator)"
    if n.decay != semantics.LEAK_ONE:
        return f"a leaky neuron (decay {n.decay}/4096)"
    if n.lo < 0:
        return f"signed levels [{n.lo}, {n.hi}] (spikes of −1: no NIR IF)"
    if n.hi < 1:
        return "a neuron that never fires"
    return None


def nir_file_bytes(graph) -> bytes:
    """The NIR file (HDF5) of a NIR graph, as bytes."""
    buf = io.BytesIO()
    _nir().write(buf, graph)
    return buf.getvalue()


def export_nir(art: Artifact, path: str | os.PathLike, timesteps: int | None = None) -> None:
    """Write `art` as a NIR file (HDF5), whole or not at all (sim.files.atomic_write)."""
    atomic_write(path, nir_file_bytes(to_nir(art, timesteps)))
