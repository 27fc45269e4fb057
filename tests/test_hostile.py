"""Hostile input: every malformed, oversized or escaping ONNX file, .sfn artifact or run input
gets its own error type and a message naming the problem, before anything large is allocated.
(Plain bad input through the CLI — missing, truncated, NaN, wrong shape — is in
test_cli_errors.py.)"""
import io
import json
import pickle
import re
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import nets
from sim import artifact
from toolchain.cli import main
from toolchain.compiler import compile_onnx
from toolchain.errors import (ArtifactError, InputFileError, ModelError, ShapeError,
                              UnsupportedOpError)
from toolchain.onnx_import import loader


def _graph_model(nodes, inits=(), in_shape=("N", 4), out_shape=("N", 4), value_info=(),
                 extra_opsets=(), in_type=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type,
                                                                         list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             list(out_shape))],
                              list(inits), value_info=list(value_info))
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _relu(src, dst, name):
    return helper.make_node("Relu", [src], [dst], name=name)


def _compile(tmp_path, model, name="m.onnx"):
    """compile_onnx on `model` written as it is (no checker on the way)."""
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return compile_onnx(path)


def _raises(error, *needles):
    """pytest.raises(error) with every needle (plain text) in the message."""
    return pytest.raises(error, match="".join(f"(?=.*{re.escape(n)})" for n in needles))


# --- external data ------------------------------------------------------------------------------
@pytest.fixture
def external(tmp_path):
    """The mlp with every initializer in `model/w.bin`; returns (folder, model path)."""
    folder = tmp_path / "model"
    folder.mkdir()
    model = onnx.load(nets.onnx_path("mlp"))
    onnx.save_model(model, folder / "m.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    return folder, folder / "m.onnx"


def _relocate(path: Path, location: str, **entries):
    """Point every external tensor of the model at `path` to `location` (and set `entries`)."""
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
            if e.key in entries:
                e.value = str(entries[e.key])
    path.write_bytes(model.SerializeToString())


def test_external_data_inside_the_folder_compiles_to_the_same_network(external):
    folder, path = external
    assert (folder / "w.bin").stat().st_size > 3000
    inline = compile_onnx(nets.onnx_path("mlp")).artifact
    outside = compile_onnx(path).artifact
    assert [n.describe() for n in outside.nodes] == [n.describe() for n in inline.nodes]
    for a, b in zip(outside.nodes, inline.nodes):
        for key, value in a.arrays().items():
            np.testing.assert_array_equal(value, b.arrays()[key])


def test_external_data_symlink_inside_the_folder_is_followed(external):
    folder, path = external
    (folder / "w.bin").rename(folder / "real.bin")
    (folder / "w.bin").symlink_to("real.bin")
    assert compile_onnx(path).artifact.nodes[1].kind == "dense"


@pytest.mark.parametrize("location", ["../w.bin", "sub/../../w.bin", "ABSOLUTE"])
def test_external_data_outside_the_folder_is_refused(external, location):
    folder, path = external
    (folder.parent / "w.bin").write_bytes((folder / "w.bin").read_bytes())
    if location == "ABSOLUTE":
        location = str(folder.parent / "w.bin")
    _relocate(path, location)
    with _raises(InputFileError, "points outside the model's folder", location, "refused"):
        compile_onnx(path)


@pytest.mark.parametrize("link", ["file", "folder"])
def test_external_data_symlink_leaving_the_folder_is_refused(external, link):
    folder, path = external
    elsewhere = folder.parent / "elsewhere"
    elsewhere.mkdir()
    (folder / "w.bin").rename(elsewhere / "w.bin")
    if link == "file":
        (folder / "w.bin").symlink_to(elsewhere / "w.bin")
    else:
        (folder / "sub").symlink_to(elsewhere)
        _relocate(path, "sub/w.bin")
    with _raises(InputFileError, "points outside the model's folder", "resolves to",
                 str(elsewhere / "w.bin")):
        compile_onnx(path)


def test_external_data_missing_or_short_file(external):
    folder, path = external
    data = (folder / "w.bin").read_bytes()
    (folder / "w.bin").write_bytes(data[:-100])
    with _raises(InputFileError, "tensor 'net.4.weight'", f"'w.bin' is {len(data) - 100} bytes",
                 "the file is short"):
        compile_onnx(path)
    (folder / "w.bin").unlink()
    with _raises(InputFileError, "external data file 'w.bin' is missing"):
        compile_onnx(path)


def test_external_data_bad_entries(external):
    _, path = external
    _relocate(path, "w.bin", length=12)
    with _raises(ModelError, "net.0.weight", "external data length 12", "need 2560 bytes"):
        compile_onnx(path)
    _relocate(path, "w.bin", offset="ten")
    with _raises(ModelError, "net.0.weight", "bad external data entry"):
        compile_onnx(path)


# --- size bombs ---------------------------------------------------------------------------------
def _peak_bytes(fn):
    """Peak bytes traced (numpy's allocations included) while `fn()` runs."""
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_initializer_bomb_is_refused_before_reading_its_data(tmp_path):
    big = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[10 ** 6, 10 ** 6],
                      raw_data=b"\0" * 16)
    m = _graph_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [big])
    with _raises(ShapeError, "tensor 'W' declares 1000000000000 elements", "refused before"):
        _compile(tmp_path, m)
    # int64 overflow of the element count must not let a bomb through
    big.dims[:] = [2 ** 32, 2 ** 32]
    m = _graph_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [big])
    with _raises(ShapeError, f"declares {2 ** 64} elements"):
        _compile(tmp_path, m)


def test_tensor_limit_is_a_module_constant(tmp_path, monkeypatch):
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    m = _graph_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [w])
    monkeypatch.setattr(loader, "MAX_TENSOR_ELEMENTS", 15)
    with _raises(ShapeError, "tensor 'W' declares 16 elements", "over the 15 limit"):
        _compile(tmp_path, m)
    monkeypatch.setattr(loader, "MAX_TENSOR_ELEMENTS", 16)
    assert _compile(tmp_path, m).artifact.input_shape == (4,)


@pytest.mark.parametrize("where", ["input", "output", "value_info"])
def test_declared_shape_bomb_is_refused_before_anything_is_allocated(tmp_path, where):
    """A 3×2048×2048 input would make compile allocate gigabytes of fallback calibration data."""
    huge = ["N", 3, 2048, 2048]
    shapes = {"input": dict(in_shape=huge, out_shape=huge),
              "output": dict(out_shape=huge),
              "value_info": dict(value_info=[helper.make_tensor_value_info(
                  "h", TensorProto.FLOAT, huge)])}[where]
    m = _graph_model([_relu("x", "h", "r1"), _relu("h", "y", "r2")], **shapes)
    label = {"input": "graph input 'x'", "output": "graph output 'y'", "value_info": "'h'"}[where]
    peak = _peak_bytes(lambda: pytest.raises(ShapeError, _compile, tmp_path, m))
    with _raises(ShapeError, label, "12582912 elements", f"over the {2 ** 22}-element limit"):
        _compile(tmp_path, m)
    assert peak < 20e6


def test_negative_and_zero_dimensions(tmp_path):
    with _raises(ShapeError, "graph input 'x' has a negative dimension ['N', -4]"):
        _compile(tmp_path, _graph_model([_relu("x", "y", "r")], in_shape=["N", -4]))
    with _raises(ShapeError, "input 'x' has batch dimension 0"):
        _compile(tmp_path, _graph_model([_relu("x", "y", "r")], in_shape=[0, 4]))
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[-2, 4])
    with _raises(ModelError, "tensor 'W' has negative dimensions [-2, 4]"):
        _compile(tmp_path, _graph_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [w]))


def test_constant_folding_bomb_is_refused_before_evaluation(tmp_path):
    """ConstantOfShape's shape goes through Abs, which whole-graph shape inference does not
    propagate: the fold itself must bound the output before computing it."""
    def model(shape):
        return _graph_model([helper.make_node("Abs", ["s"], ["a"], name="abs"),
                             helper.make_node("ConstantOfShape", ["a"], ["c"], name="fill"),
                             helper.make_node("Add", ["x", "c"], ["y"], name="add")],
                            [numpy_helper.from_array(np.array(shape, np.int64), "s")])
    assert _compile(tmp_path, model([-1, -4])).artifact.output_shape == (4,)
    peak = _peak_bytes(lambda: pytest.raises(ShapeError, _compile, tmp_path,
                                             model([-100000, -100000])))
    with _raises(ShapeError, "node 'fill' (ConstantOfShape", "constant 'c' would have shape "
                 "[100000, 100000] (10000000000 elements)", "refused before evaluating it"):
        _compile(tmp_path, model([-100000, -100000]))
    assert peak < 20e6


def test_constant_loop_is_not_evaluated(tmp_path):
    """A Loop whose inputs are all constants (trip count 2**62) is refused, not run."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Identity", ["v"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [4])])
    inits = [numpy_helper.from_array(np.array(2 ** 62, np.int64), "trips"),
             numpy_helper.from_array(np.array(True), "go"),
             numpy_helper.from_array(np.ones(4, np.float32), "v0")]
    m = _graph_model([helper.make_node("Loop", ["trips", "go", "v0"], ["v"], name="loop",
                                       body=body),
                      helper.make_node("Add", ["x", "v"], ["y"], name="add")], inits)
    with _raises(UnsupportedOpError, "node 'loop' (Loop", "op 'Loop' is not supported"):
        _compile(tmp_path, m)


# --- graph structure ----------------------------------------------------------------------------
def test_cycle_is_named(tmp_path):
    m = _graph_model([_relu("x", "a", "r1"), helper.make_node("Add", ["a", "b"], ["c"], name="add"),
                      _relu("c", "b", "r2"), _relu("c", "y", "r3")])
    with _raises(ModelError, "the graph has a cycle: node 'r2' (Relu) → node 'add' (Add) → "
                 "node 'r2' (Relu)"):
        _compile(tmp_path, m)
    with _raises(ModelError, "cycle: node 'self' (Add) → node 'self' (Add)"):
        _compile(tmp_path, _graph_model([helper.make_node("Add", ["x", "y"], ["y"], name="self")]))


def test_nodes_out_of_order_are_named(tmp_path):
    with _raises(ModelError, "node 'second' (Relu) reads the output of node 'first' (Relu), "
                 "which comes later"):
        _compile(tmp_path, _graph_model([_relu("a", "y", "second"), _relu("x", "a", "first")]))


def test_dangling_input_is_named(tmp_path):
    m = _graph_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="add")])
    with _raises(ModelError, "node 'add' (Add) reads 'ghost', which no node, graph input or "
                 "initializer produces"):
        _compile(tmp_path, m)
    with _raises(ModelError, "graph output 'y' is not produced"):
        _compile(tmp_path, _graph_model([_relu("x", "a", "r")]))


def test_duplicate_names(tmp_path):
    with _raises(ModelError, "tensor 'y' is produced twice: by node 'r1' (Relu) and by node "
                 "'r2' (Relu)"):
        _compile(tmp_path, _graph_model([_relu("x", "y", "r1"), _relu("x", "y", "r2")]))
    with _raises(ModelError, "tensor 'x' is produced twice: by the graph input and by node 'r'"):
        _compile(tmp_path, _graph_model([_relu("x", "x", "r"), _relu("x", "y", "r2")]))
    m = _graph_model([_relu("x", "y", "r")])
    m.graph.output.append(m.graph.output[0])
    with _raises(ModelError, "graph output 'y' is listed 2 times"):
        _compile(tmp_path, m)
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    m = _graph_model([helper.make_node("MatMul", ["x", "W"], ["y"])], [w, w])
    with _raises(ModelError, "initializer 'W' is declared twice"):
        _compile(tmp_path, m)


@pytest.mark.parametrize("imported", [True, False])
def test_custom_domain_is_refused_before_the_checker(tmp_path, imported):
    """With or without an opset import for the domain, the message is ours, not the checker's."""
    m = _graph_model([_relu("x", "h", "r"),
                      helper.make_node("FastGelu", ["h"], ["y"], name="gelu", domain="com.acme")],
                     extra_opsets=["com.acme"] if imported else ())
    with _raises(UnsupportedOpError, "node 'gelu' (FastGelu) is from domain 'com.acme'",
                 "only default-domain (ai.onnx) ops"):
        _compile(tmp_path, m)


# --- tensor contents and types ------------------------------------------------------------------
def test_tensor_data_must_match_its_dims_and_type(tmp_path):
    def matmul(w):
        return _graph_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [w])
    short = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 4], raw_data=b"\0" * 60)
    with _raises(ModelError, "tensor 'W' has 60 bytes of data; its dims [4, 4] and type need 64"):
        _compile(tmp_path, matmul(short))
    few = helper.make_tensor("W", TensorProto.FLOAT, [4, 4], [1.0] * 16)
    del few.float_data[3:]
    with _raises(ModelError, "tensor 'W' has 3 values in float_data; its dims [4, 4] need 16"):
        _compile(tmp_path, matmul(few))
    text = helper.make_tensor("W", TensorProto.STRING, [1], [b"weights"])
    with _raises(UnsupportedOpError, "tensor 'W' has data type STRING; supported: FLOAT"):
        _compile(tmp_path, matmul(text))
    unknown = TensorProto(name="W", data_type=99, dims=[1], raw_data=b"\0")
    with _raises(UnsupportedOpError, "tensor 'W' has data type unknown type 99"):
        _compile(tmp_path, matmul(unknown))


def test_non_finite_weights_are_named(tmp_path):
    w = np.eye(4, dtype=np.float32)
    w[1, 2], w[3, 3] = np.nan, -np.inf
    m = _graph_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                     [numpy_helper.from_array(w, "W")])
    with _raises(ModelError, "tensor 'W' has 2 NaN/Inf values"):
        _compile(tmp_path, m)
    const = helper.make_node("Constant", [], ["k"], name="k", value=numpy_helper.from_array(
        np.array([1.0, np.inf, 1.0, 1.0], np.float32)))
    with _raises(ModelError, "has 1 NaN/Inf values"):
        _compile(tmp_path, _graph_model([const, helper.make_node("Mul", ["x", "k"], ["y"])]))


def test_sparse_tensors_and_non_float_input_are_refused(tmp_path):
    m = _graph_model([_relu("x", "y", "r")])
    values = numpy_helper.from_array(np.ones(2, np.float32), "S")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(
        values, numpy_helper.from_array(np.array([0, 3], np.int64)), [4]))
    with _raises(UnsupportedOpError, "sparse initializer 'S' is not supported"):
        _compile(tmp_path, m)
    with _raises(UnsupportedOpError, "input 'x' is INT64; the input must be a FLOAT tensor"):
        _compile(tmp_path, _graph_model([helper.make_node("Cast", ["x"], ["y"], to=1)],
                                        in_type=TensorProto.INT64))
    m = _graph_model([_relu("x", "y", "r")])
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
    with _raises(ModelError, "graph output 'y' has element type UNDEFINED"):
        _compile(tmp_path, m)


def test_unreadable_model_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(_graph_model([_relu("x", "y", "r")]).SerializeToString())

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "read_bytes", denied)  # chmod 0 does not stop root
    with _raises(InputFileError, "m.onnx: cannot read (Permission denied)"):
        compile_onnx(path)


# --- .sfn artifacts -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sfn_bytes():
    return artifact.to_bytes(nets.compiled("mlp")[0].artifact)


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                        compress_type=compression)
    return buf.getvalue()


def _forged(members: dict[str, bytes], edit) -> dict[str, bytes]:
    """Members with the manifest edited by `edit(manifest, members)` and its hash recomputed, as
    a forger would: only the loader's own checks stand in the way."""
    members = dict(members)
    manifest = json.loads(members["manifest.json"])
    manifest.pop("content_sha256")
    edit(manifest, members)
    manifest["content_sha256"] = artifact._digest(
        manifest, {k: v for k, v in members.items() if k != "manifest.json"})
    members["manifest.json"] = json.dumps(manifest, sort_keys=True, indent=1).encode()
    return members


def _load(tmp_path, data: bytes, **kw):
    path = tmp_path / "a.sfn"
    path.write_bytes(data)
    return artifact.load(path, **kw)


def test_declared_uncompressed_size_over_the_limit(tmp_path, sfn_bytes):
    """The central directory claims 3 GiB for one member; the file stays small."""
    data = bytearray(sfn_bytes)
    entry = data.index(b"PK\x01\x02")  # first central directory entry: size at offset 24
    (first,) = struct.unpack_from("<I", data, entry + 24)
    struct.pack_into("<I", data, entry + 24, 3 * 1024 ** 3)
    declared = sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(sfn_bytes)).infolist())
    with _raises(ArtifactError, f"declares {declared - first + 3 * 1024 ** 3} uncompressed "
                 "bytes, over the 2147483648-byte limit"):
        _load(tmp_path, bytes(data))
    with _raises(ArtifactError, f"{len(sfn_bytes)} bytes, over the 1000-byte limit"):
        _load(tmp_path, sfn_bytes, max_uncompressed=1000)


@pytest.mark.parametrize("name", ["../x.npy", "/etc/x.npy", "arrays/../../x.npy", "a\\..\\x"])
def test_member_outside_the_archive(tmp_path, sfn_bytes, name):
    members = _members(sfn_bytes)
    members[name] = b"x"
    with _raises(ArtifactError, f"member {name!r} points outside the archive"):
        _load(tmp_path, _zip(members))


def test_unknown_duplicate_and_compressed_members(tmp_path, sfn_bytes):
    members = _members(sfn_bytes)
    with _raises(ArtifactError, "unknown members ['extra.npy']"):
        _load(tmp_path, _zip({**members, "extra.npy": b"x"}))
    twice = io.BytesIO()
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(twice, "w") as zf:
        for name, blob in list(members.items()) + [("manifest.json", b"{}")]:
            zf.writestr(name, blob)
    with _raises(ArtifactError, "member 'manifest.json' appears twice"):
        _load(tmp_path, twice.getvalue())
    with _raises(ArtifactError, "is compressed or encrypted"):
        _load(tmp_path, _zip(members, zipfile.ZIP_DEFLATED))


def test_member_header_bomb_and_pickle_are_refused_before_loading(tmp_path, sfn_bytes):
    """A forged member whose .npy header declares 10**12 elements (the manifest agreeing), and
    one holding a pickled object array: neither reaches np.load."""
    members = _members(sfn_bytes)
    name = sorted(n for n in members if n.startswith("arrays/"))[0]
    header = {"descr": "<i2", "fortran_order": False, "shape": (10 ** 6, 10 ** 6)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)

    def declare(shape, dtype):
        def edit(manifest, blobs):
            for node in manifest["nodes"]:
                for entry in node["arrays"].values():
                    if entry["member"] == name:
                        entry["shape"], entry["dtype"] = shape, dtype
        return edit
    bomb = _forged({**members, name: buf.getvalue() + b"\0" * 64},
                   declare([10 ** 6, 10 ** 6], "<i2"))
    peak = _peak_bytes(lambda: pytest.raises(ArtifactError, _load, tmp_path, _zip(bomb)))
    with _raises(ArtifactError, "64 bytes of array data for <i2[1000000, 1000000]"):
        _load(tmp_path, _zip(bomb))
    assert peak < 20e6
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    forged = _forged({**members, name: pickled.getvalue()}, declare([1], "|O"))
    with _raises(ArtifactError, "holds Python objects (pickled data); refused"):
        _load(tmp_path, _zip(forged))


# --- run inputs the CLI tests do not cover ------------------------------------------------------
@pytest.fixture(scope="module")
def model_sfn(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "m.sfn"
    compiled, _, test = nets.compiled("avgpool_cnn")
    compiled.save(path)
    return path, test


def _run(model, x_path, out):
    return CliRunner().invoke(main, ["run", str(model), "--input", str(x_path), "--output",
                                     str(out)])


@pytest.mark.parametrize("case,needles", [
    ("inf", ["input contains 2 NaN/Inf values"]),
    ("int32", ["x.npy: dtype int32; inputs must be float32"]),
    ("zero_d", ["x.npy", "0-d"]),
    ("npz", ["x.npy", ".npz"]),
    ("raw_pickle", ["x.npy: not a .npy file", "Python pickle, which is never loaded"]),
    ("empty_file", ["x.npy: not a .npy file (it is empty)"]),
])
def test_run_refuses_bad_input_arrays(tmp_path, model_sfn, case, needles):
    model, test = model_sfn
    x_path, out = tmp_path / "x.npy", tmp_path / "y.npy"
    x = test[:8].copy()
    if case == "inf":
        x[1, 0, 3, 3], x[6, 0, 0, 0] = np.inf, -np.inf
        np.save(x_path, x)
    elif case == "int32":
        np.save(x_path, (x * 100).astype(np.int32))
    elif case == "zero_d":
        np.save(x_path, np.float32(0.5))
    elif case == "npz":
        with open(x_path, "wb") as f:  # an .npz archive under a .npy name
            np.savez(f, x=x)
    elif case == "raw_pickle":
        x_path.write_bytes(pickle.dumps(x))
    else:
        x_path.write_bytes(b"")
    r = _run(model, x_path, out)
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error:") and "Traceback" not in r.output
    for needle in needles:
        assert needle in r.output, r.output
    assert not out.exists() and not list(tmp_path.glob(".y.npy.*"))
