"""Hardware target descriptions: one JSON file per target in `toolchain/targets/`.

A target file holds every limit, synapse-encoding constant and energy constant the mapper and the
energy report use, each as `{"value", "unit", "certainty", "source"}`, so a report can print which
constants it used and where they come from. Sections: `limits`, `synapse_encoding`, `energy`
(required keys below) and `reference` (measured figures, shown only). A limit whose value is null
is unknown and not enforced.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from toolchain.errors import InputFileError

TARGETS_DIR = Path(__file__).parent / "targets"
FORMAT_VERSION = 1

REQUIRED = {
    "limits": ("cores_per_chip", "neurons_per_core", "neurons_per_chip", "synapses_per_chip",
               "synaptic_memory_bits_per_core", "input_axons_per_core", "payload_bits",
               "state_bits", "weight_bits"),
    "synapse_encoding": ("word_bits", "group_header_bits", "synapses_per_group", "index_bits",
                         "dense_format", "sparse_format", "conv_weight_sharing"),
    "energy": ("synaptic_op_pj", "neuron_update_pj", "spike_message_pj", "ann_mac_fp32_pj",
               "ann_ac_fp32_pj", "ann_mac_int8_pj", "ann_ac_int8_pj"),
}
# limits that must be known: the mapper cannot place anything without them
KNOWN = ("cores_per_chip", "neurons_per_core", "synaptic_memory_bits_per_core", "payload_bits",
         "state_bits", "weight_bits", "word_bits", "group_header_bits", "synapses_per_group",
         "index_bits")


class TargetError(InputFileError):
    """A target file is missing, malformed, or lacks a constant the toolchain needs."""


@dataclass(frozen=True)
class Quantity:
    value: float | int | bool | None
    unit: str
    certainty: str
    source: str


@dataclass
class Target:
    name: str
    description: str
    path: str
    sections: dict[str, dict[str, Quantity]] = field(default_factory=dict)

    def __getitem__(self, key: str):
        """The value of constant `key` from any section (None when unknown)."""
        for section in self.sections.values():
            if key in section:
                return section[key].value
        raise KeyError(key)

    def quantity(self, key: str) -> Quantity:
        for section in self.sections.values():
            if key in section:
                return section[key]
        raise KeyError(key)

    def constants(self, section: str) -> dict[str, Quantity]:
        return dict(self.sections.get(section, {}))

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "path": self.path,
                **{s: {k: vars(q) for k, q in qs.items()} for s, qs in self.sections.items()}}


def list_targets() -> list[str]:
    """Names of the bundled targets."""
    return sorted(p.stem for p in TARGETS_DIR.glob("*.json"))


def load_target(name_or_path: str | os.PathLike) -> Target:
    """A bundled target by name (`loihi2`) or a target file by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (path.suffix == ".json" or os.sep in text or "/" in text):
        path = TARGETS_DIR / f"{text}.json"
        if not path.is_file():
            raise TargetError(f"unknown target {text!r}; bundled targets: "
                              f"{', '.join(list_targets())} (or pass a target .json path)")
    if not path.is_file():
        raise TargetError(f"{path}: no such target file")
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise TargetError(f"{path}: not a readable JSON target file ({exc})") from None
    return _parse(data, str(path))


def _parse(data, where: str) -> Target:
    if not isinstance(data, dict):
        raise TargetError(f"{where}: a target file is a JSON object")
    if data.get("format") != FORMAT_VERSION:
        raise TargetError(f"{where}: target format {data.get('format')!r}, this toolchain reads "
                          f"format {FORMAT_VERSION}")
    sections = {}
    for section in (*REQUIRED, "reference"):
        entries = data.get(section, {})
        if not isinstance(entries, dict):
            raise TargetError(f"{where}: section {section!r} must be an object")
        missing = [k for k in REQUIRED.get(section, ()) if k not in entries]
        if missing:
            raise TargetError(f"{where}: section {section!r} lacks {', '.join(missing)}")
        sections[section] = {k: _quantity(v, f"{where}: {section}.{k}")
                             for k, v in entries.items()}
    target = Target(str(data.get("name") or Path(where).stem), str(data.get("description", "")),
                    where, sections)
    for key in KNOWN:
        value = target[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise TargetError(f"{where}: {key} must be a positive integer, got {value!r}")
    axons = target["input_axons_per_core"]
    if axons is not None and (not isinstance(axons, int) or axons <= 0):
        raise TargetError(f"{where}: input_axons_per_core must be a positive integer or null, "
                          f"got {axons!r}")
    for key in REQUIRED["energy"]:
        if not isinstance(target[key], (int, float)) or target[key] < 0:
            raise TargetError(f"{where}: energy constant {key} must be a number ≥ 0, got "
                              f"{target[key]!r}")
    return target


def _quantity(entry, where: str) -> Quantity:
    if not isinstance(entry, dict) or "value" not in entry or "source" not in entry:
        raise TargetError(f"{where}: expected {{\"value\", \"unit\", \"certainty\", \"source\"}}, "
                          f"got {entry!r}")
    value = entry["value"]
    if value is not None and not isinstance(value, (int, float, bool)):
        raise TargetError(f"{where}: value must be a number, true/false or null, got {value!r}")
    return Quantity(value, str(entry.get("unit", "")), str(entry.get("certainty", "")),
                    str(entry["source"]))
