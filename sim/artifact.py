"""The `.sfn` artifact: one zip of `manifest.json` and `.npy` arrays.

Written whole or not at all (sim.files: a temp file in the target folder, then a rename) with
deterministic bytes (fixed zip timestamps, sorted members, canonical JSON, members stored
uncompressed so the bytes do not depend on the zlib version). The manifest carries a SHA-256 of
its own canonical form plus every member, checked on load; the file must also equal its
canonical re-serialization, so a flipped byte anywhere — headers and fields the zip format
itself never checks included — is corruption. Arrays load with `allow_pickle=False` and are
checked against the dtype and shape the manifest declares. Unknown members, paths that leave the
archive, oversized archives and newer format versions are refused.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tokenize
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.ops import Node, node_from_record
from sim.ops.base import EDGE, SINK, SOURCE, VALUE_LIMIT, counted_setattr
from sim.errors import ArtifactError
from sim.files import atomic_write, read_npy_header, read_user_file  # noqa: F401  (re-exported)

FORMAT = "sfn"
FORMAT_VERSION = 1
MAX_UNCOMPRESSED = 2 * 1024 ** 3  # bytes; a larger archive is refused before extraction
MAX_MEMBERS = 100_000
MAX_NODES = 100_000
MAX_ELEMENTS = 2 ** 26   # per-sample elements of all nodes together (64 Loihi 2 chips of neurons)
MAX_TIMESTEPS = 4096
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass
class Artifact:
    """A compiled SFN network: nodes in topological order plus metadata and the quantization record.

    `meta` holds JSON-able facts (source hash, target, calibration, levels, per-layer summary);
    `record` holds per-layer, per-channel float arrays for inspection (weight scales, activation
    scales), keyed "layer/field".
    """
    nodes: list[Node]
    input: str
    output: str
    meta: dict = field(default_factory=dict)
    record: dict[str, np.ndarray] = field(default_factory=dict)

    __setattr__ = counted_setattr      # runtimes' caches notice a replaced field

    def node(self, name: str) -> Node:
        if self.nodes and self.nodes[-1].name == name:     # the readout, asked for most
            return self.nodes[-1]
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.node(self.input).shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.node(self.output).shape

    def validate(self) -> None:
        """Everything a simulator relies on, so that a valid artifact is one both backends run
        identically in bounded time and memory, and anything else an ArtifactError naming the
        node and field: unique names, inputs defined before use, one input node and one readout
        (the manifest's), each node's own check against its inputs' shapes (`Node.check`:
        types, ranges, shapes, per-node size limits), the total size (MAX_ELEMENTS), a bound on
        every value a node can reach (VALUE_LIMIT, delays followed to a fixed point), the meta
        fields the runtimes and the CLI read (`check_meta`) and the record's arrays."""
        if not isinstance(self.nodes, list) or not 0 < len(self.nodes) <= MAX_NODES:
            raise ArtifactError(f"the node list must hold 1 to {MAX_NODES:,} nodes")
        seen, shapes, total = set(), {}, 0
        for n in self.nodes:
            if not isinstance(n, Node) or not isinstance(n.name, str) or not n.name:
                raise ArtifactError(f"node {getattr(n, 'name', n)!r} is not a named node")
            if n.name in seen:
                raise ArtifactError(f"duplicate node name {n.name!r}")
            if not isinstance(n.inputs, tuple) or not all(isinstance(i, str) for i in n.inputs):
                raise ArtifactError(f"node {n.name!r}: inputs {n.inputs!r} are not node names")
            missing = [i for i in n.inputs if i not in seen]
            if missing:
                raise ArtifactError(f"node {n.name!r} reads {missing} before they are defined")
            problem = n.check([shapes[i] for i in n.inputs])
            if problem:
                raise ArtifactError(f"node {n.name!r} ({n.kind}): {problem}")
            shapes[n.name] = tuple(n.shape)
            total += math.prod(n.shape)
            seen.add(n.name)
        if total > MAX_ELEMENTS:
            raise ArtifactError(f"the nodes hold {total:,} elements per sample, over the "
                                f"{MAX_ELEMENTS:,} an artifact may hold")
        if self.input not in seen or self.output not in seen:
            raise ArtifactError("manifest input/output names do not match any node")
        for role, name, what in ((SOURCE, self.input, "input"), (SINK, self.output, "readout")):
            found = [n.name for n in self.nodes if n.role == role]
            if found != [name]:
                raise ArtifactError(f"the artifact needs exactly one {what} node, the manifest's "
                                    f"{name!r}; it has {found[:5]}")
        for n in self.nodes:
            if n.role == EDGE:
                if n.source not in seen:
                    raise ArtifactError(f"delay {n.name!r} reads unknown node {n.source!r}")
                if tuple(self.node(n.source).shape) != tuple(n.shape):
                    raise ArtifactError(f"delay {n.name!r} has shape {n.shape}, its source "
                                        f"{n.source!r} {self.node(n.source).shape}")
        self._check_magnitudes()
        check_meta(self.meta)
        check_record(self.record)

    def _check_magnitudes(self) -> None:
        """Every node's values stay within ±VALUE_LIMIT in every step (Node.magnitude: bounds
        from the inputs' bounds; a delay carries its source's bound, iterated to a fixed point,
        which a loop through synapses alone, without a neuron, never reaches)."""
        delays = {n.name: 0.0 for n in self.nodes if n.role == EDGE}
        by_name = {n.name: n for n in self.nodes}
        for _ in range(len(delays) + 2):
            bounds: dict[str, float] = {}
            for n in self.nodes:
                m = delays[n.name] if n.name in delays else \
                    n.magnitude([bounds[i] for i in n.inputs])
                if not m <= VALUE_LIMIT:
                    raise ArtifactError(f"node {n.name!r} ({n.kind}): its values can reach "
                                        f"{m:.3g}, over the 2^40 every node is held to (the "
                                        "simulators compute exactly below it)")
                bounds[n.name] = m
            reached = {d: bounds[by_name[d].source] for d in delays}
            if reached == delays:
                return
            delays = reached
        raise ArtifactError("values grow without bound around a recurrent loop of delays "
                            f"{sorted(delays)[:5]} that passes through no neuron")

    def save(self, path: str | os.PathLike) -> None:
        """Write this artifact to `path` (atomically; same artifact, same bytes)."""
        save(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Artifact":
        """Read and fully validate the artifact at `path` (ArtifactError naming any defect)."""
        return load(path)

    @property
    def recurrent(self) -> bool:
        """A recurrent network runs on sequences (N, T, *input_shape), one readout per step."""
        return any(n.role == "edge" for n in self.nodes)


def check_meta(meta) -> None:
    """The meta fields the runtimes and the CLI read, by type and range: `timesteps` an integer
    in [1, MAX_TIMESTEPS]; `target` a target name (never a path: `report` would read that
    file); `source`, `placement`, `rnn`, `scale` objects; `rnn`'s `task` a name; `notes` a list
    of strings. Other fields are JSON the CLI only prints."""
    if not isinstance(meta, dict):
        raise ArtifactError(f"meta is a {type(meta).__name__}, not an object")
    steps = meta.get("timesteps", 1)
    if not (isinstance(steps, int) and not isinstance(steps, bool)
            and 1 <= steps <= MAX_TIMESTEPS):
        raise ArtifactError(f"meta timesteps {steps!r} is not an integer in [1, {MAX_TIMESTEPS}]")
    target = meta.get("target")
    if target is not None and (not isinstance(target, str) or not _TARGET_NAME.fullmatch(target)
                               or target.endswith(".json")):
        raise ArtifactError(f"meta target {target!r} is not a target name")
    for key in ("source", "placement", "rnn", "scale"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise ArtifactError(f"meta {key} is a {type(meta[key]).__name__}, not an object")
    task = (meta.get("rnn") or {}).get("task")
    if task is not None and not isinstance(task, str):
        raise ArtifactError(f"meta rnn task {task!r} is not a task name")
    notes = meta.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ArtifactError("meta notes is not a list of strings")


def check_record(record) -> None:
    """The quantization record: names → arrays of real numbers (what `inspect` summarizes)."""
    if not isinstance(record, dict):
        raise ArtifactError(f"record is a {type(record).__name__}, not an object")
    for key, value in record.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray) or \
                value.dtype.kind not in "iuf":
            kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise ArtifactError(f"record {key!r} holds {kind}, not an array of numbers")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _digest(manifest: dict, members: dict[str, bytes]) -> str:
    h = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    for name in sorted(members):
        h.update(name.encode())
        h.update(members[name])
    return h.hexdigest()


def to_bytes(art: Artifact) -> bytes:
    """Serialize deterministically (same artifact, same bytes)."""
    art.validate()
    members: dict[str, bytes] = {}
    records = []
    for i, n in enumerate(art.nodes):
        arrays = {}
        for key, value in n.arrays().items():
            member = f"arrays/{i:05d}_{key}.npy"
            value = np.asarray(value, dtype=type(n).array_dtypes.get(key, value.dtype))
            members[member] = _npy_bytes(value)
            arrays[key] = {"member": member, "dtype": value.dtype.str, "shape": list(value.shape)}
        records.append({"name": n.name, "kind": n.kind, "inputs": list(n.inputs),
                        "shape": list(n.shape), "params": n.params(), "arrays": arrays})
    record_index = {}
    for j, key in enumerate(sorted(art.record)):
        value = np.asarray(art.record[key])
        member = f"record/{j:05d}.npy"
        members[member] = _npy_bytes(value)
        record_index[key] = {"member": member, "dtype": value.dtype.str, "shape": list(value.shape)}
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "input": art.input,
                "output": art.output, "nodes": records, "meta": art.meta, "record": record_index}
    manifest["content_sha256"] = _digest(manifest, members)
    members["manifest.json"] = json.dumps(manifest, sort_keys=True, indent=1).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])
    return buf.getvalue()


def save(art: Artifact, path: str | os.PathLike) -> None:
    atomic_write(path, to_bytes(art))


def _read_member(data: bytes, entry: dict, what: str) -> np.ndarray:
    """The array in a member's .npy bytes. Its header must declare the manifest's dtype and shape
    and the bytes must hold exactly that many elements, all checked before any allocation."""
    buf = io.BytesIO(data)
    try:
        if np.lib.format.read_magic(buf) != (1, 0):
            raise ArtifactError(f"{what}: not a version 1.0 .npy member")
        shape, fortran, dtype = read_npy_header(buf, (1, 0))
        if dtype.hasobject:
            raise ArtifactError(f"{what}: holds Python objects (pickled data); refused")
        declared = (entry["dtype"], list(entry["shape"]))
        if (dtype.str, list(shape)) != declared or fortran:
            raise ArtifactError(f"{what}: array is {dtype.str}{list(shape)}, manifest declares "
                                f"{declared[0]}{declared[1]}")
        if len(data) - buf.tell() != math.prod(shape) * dtype.itemsize:
            raise ArtifactError(f"{what}: {len(data) - buf.tell()} bytes of array data for "
                                f"{dtype.str}{list(shape)}")
        # the data after the header just read (np.load would parse the header again, with
        # ast outside read_npy_header's lock); a writable copy, as np.load returns
        return np.frombuffer(data, dtype, offset=buf.tell()).reshape(shape).copy()
    except (KeyError, TypeError, ValueError, EOFError, SyntaxError, tokenize.TokenError) as exc:
        # numpy parses the header's dict literal with tokenize/ast, which raise their own errors
        raise ArtifactError(f"{what}: unreadable array ({exc})") from None


def _check_members(infos: list[zipfile.ZipInfo], path: Path, max_uncompressed: int) -> None:
    """Count, declared size, names and storage of the members, from the central directory."""
    if len(infos) > MAX_MEMBERS:
        raise ArtifactError(f"{path}: {len(infos)} members, more than {MAX_MEMBERS}")
    total = sum(i.file_size for i in infos)
    if total > max_uncompressed:
        raise ArtifactError(f"{path}: declares {total} uncompressed bytes, over the "
                            f"{max_uncompressed}-byte limit")
    seen = set()
    for i in infos:
        name = i.filename
        if name.startswith("/") or ".." in Path(name).parts or "\\" in name:
            raise ArtifactError(f"{path}: member {name!r} points outside the archive")
        if name in seen:
            raise ArtifactError(f"{path}: member {name!r} appears twice")
        seen.add(name)
        if i.compress_type != zipfile.ZIP_STORED or i.flag_bits & 0x1:
            raise ArtifactError(f"{path}: member {name!r} is compressed or encrypted; .sfn "
                                "members are stored as they are")


def load(path: str | os.PathLike, max_uncompressed: int = MAX_UNCOMPRESSED) -> Artifact:
    """Read and fully validate an artifact; any defect raises ArtifactError naming it. The file
    is read once, so a writer replacing it meanwhile cannot mix two versions."""
    path = Path(path)
    data = read_user_file(path, max_uncompressed, "artifact file", ArtifactError)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise ArtifactError(f"{path}: not an .sfn artifact (not a zip archive: {exc})") from None
    with zf:
        _check_members(zf.infolist(), path, max_uncompressed)
        names = zf.namelist()
        if "manifest.json" not in names:
            raise ArtifactError(f"{path}: not an .sfn artifact (no manifest.json)")
        try:
            manifest = json.loads(zf.read("manifest.json"))
        except (ValueError, RecursionError, zipfile.BadZipFile, OSError, EOFError,
                NotImplementedError) as exc:  # NotImplementedError: zip features we never write
            raise ArtifactError(f"{path}: manifest.json is corrupt ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArtifactError(f"{path}: not an .sfn artifact (format is "
                                f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
        version = manifest.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
            raise ArtifactError(f"{path}: format version {version!r}, this reader knows versions "
                                f"1 to {FORMAT_VERSION}; upgrade the toolchain")
        try:
            declared = {e["member"] for r in manifest["nodes"] for e in r["arrays"].values()}
            declared |= {e["member"] for e in manifest["record"].values()}
            unknown = set(names) - declared - {"manifest.json"}
            if unknown:
                raise ArtifactError(f"{path}: unknown members {sorted(unknown)[:5]}")
            members = {name: zf.read(name) for name in sorted(declared)}
            claimed = manifest.pop("content_sha256", None)
            if claimed != _digest(manifest, members):
                raise ArtifactError(f"{path}: content hash mismatch: the artifact is corrupt or "
                                    "was modified after it was written")
            nodes = []
            for r in manifest["nodes"]:
                arrays = {k: _read_member(members[e["member"]], e,
                                          f"{path}: node {r['name']!r} field {k!r}")
                          for k, e in r["arrays"].items()}
                nodes.append(node_from_record(r, arrays))
            record = {k: _read_member(members[e["member"]], e, f"{path}: record {k!r}")
                      for k, e in manifest["record"].items()}
            art = Artifact(nodes, manifest["input"], manifest["output"], manifest.get("meta", {}),
                           record)
            art.validate()
            canonical = to_bytes(art)
        except ArtifactError as exc:
            if str(exc).startswith(f"{path}: "):
                raise
            raise ArtifactError(f"{path}: {exc}") from None
        except (KeyError, TypeError, AttributeError, ValueError, IndexError, RecursionError,
                zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
            raise ArtifactError(f"{path}: corrupt or malformed artifact ({type(exc).__name__}: "
                                f"{exc})") from None
    if canonical != data:
        raise ArtifactError(f"{path}: bytes differ from the artifact's canonical form: the file is "
                            "corrupt or was modified after it was written")
    return art
