"""What a compilation returns (`Compiled`) and the steps every compiler shares: agreement with
the float model, placement on the target's cores."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from sim.artifact import Artifact, atomic_write, save, to_bytes
from toolchain.mapping import map_artifact
from toolchain.quantize.tensor import MIN_WEIGHT_EXP
from toolchain.reference import emit_reference
from toolchain.target import load_target


@dataclass
class Compiled:
    artifact: Artifact
    imported: object            # the ImportedModel of a feed-forward ONNX model, else None
    layers: list                # LayerRow per layer (the compiler's table)
    notes: list[str] = field(default_factory=list)
    agreement: dict = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        save(self.artifact, path)

    def write_reference(self, path: str | os.PathLike) -> None:
        atomic_write(path, self.reference_bytes())

    def artifact_bytes(self) -> bytes:
        """The artifact's .sfn bytes (what `save` writes)."""
        return to_bytes(self.artifact)

    def reference_bytes(self) -> bytes:
        """The integer reference ONNX, serialized (what `write_reference` writes)."""
        return emit_reference(self.artifact).SerializeToString()


def agreement(float_out: np.ndarray, snn_out: np.ndarray) -> dict:
    """Top-1 agreement (for class scores) and error of the SNN readout against the float model."""
    if float_out.shape != snn_out.shape and float_out.size == snn_out.size:
        float_out = float_out.reshape(snn_out.shape)   # a final softmax's trailing reshapes
    f = float_out.reshape(-1, float_out.shape[-1])
    s = snn_out.reshape(-1, snn_out.shape[-1])
    err = s - f
    out = {"samples": int(len(f)), "max_abs_error": float(np.abs(err).max(initial=0)),
           "rel_rms_error": float(np.sqrt((err ** 2).mean()) / max(np.sqrt((f ** 2).mean()), 1e-12))}
    if f.shape[1] > 1:
        out["top1_agreement"] = float((f.argmax(1) == s.argmax(1)).mean())
    return out


def place(art: Artifact, target: str) -> None:
    """Map the artifact onto the target's cores; the placement becomes part of the artifact.
    A network that cannot fit raises MappingError naming the layer, the limit and the excess."""
    tgt = load_target(target)
    art.meta["target"] = tgt.name
    art.meta["placement"] = map_artifact(art, tgt).to_json()


LOW_WEIGHT_BITS = 6      # a layer with fewer weight bits than this is named in a warning


def weight_warnings(rows) -> list[str]:
    """Warnings for layers whose weights kept fewer than LOW_WEIGHT_BITS bits, or whose exponent
    is at the quantizer's lowest (a unit as coarse as the target allows)."""
    out = [f"warning: layer {r.name!r} has {r.weight_bits}-bit weights (under "
           f"{LOW_WEIGHT_BITS}): expect a visible accuracy loss there"
           for r in rows if r.weight_bits is not None and r.weight_bits < LOW_WEIGHT_BITS]
    out += [f"warning: layer {r.name!r} needs the lowest weight exponent (2^{MIN_WEIGHT_EXP}): "
            "its accumulator unit is as coarse as the target allows"
            for r in rows if r.weight_exp is not None and r.weight_exp <= MIN_WEIGHT_EXP]
    return out


def layer_rows_json(rows) -> list[dict]:
    """The per-layer table as JSON (the artifact's meta["layers"])."""
    return [r.to_json() for r in rows]


def finish_recurrent(art: Artifact, layers: list, notes: list[str], agree: dict,
                     target: str) -> Compiled:
    """A recurrent artifact made whole: its notes, its placement on the target's cores and
    its agreement with the float network recorded, as a Compiled without an import."""
    art.meta["notes"] = notes
    place(art, target)
    result = Compiled(art, None, layers, notes)
    result.agreement = agree
    art.meta["agreement"] = agree
    return result
