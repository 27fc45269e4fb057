"""Hostile ONNX files and .npy inputs: memory and time bounds of the import.

Each bomb is refused with one named error (or, where it is dead weight, dropped unread) within a
time bound (CPU seconds of the process, so that a busy machine does not fail the test), and its
peak memory is measured in a fresh process from /proc/self/status (VmHWM, the resident
high-water mark) under an address-space limit, so a regression fails the test instead of taking
the machine down. Files go to pytest's tmp_path; the large external-data files
are sparse (no disk blocks)."""
import io
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import nets
from toolchain.cli import main
from toolchain.compiler import compile_onnx
from toolchain.errors import InputFileError, ModelError, ShapeError, UnsupportedOpError
from toolchain.npyio import load_user_npy
from toolchain.onnx_import import import_onnx, loader

ROOT = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 3 * 1024 ** 3  # address space of a probe process: a regression fails, not the machine

# Imports the toolchain, then runs import_onnx (or compile_onnx) on argv[1] and prints the
# outcome, the CPU seconds it took and how far the resident high-water mark rose meanwhile.
PROBE = r"""
import json, sys, time
def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
from toolchain.errors import ToolchainError
from toolchain.compiler import compile_onnx
from toolchain.onnx_import import import_onnx
run = {"import": import_onnx, "compile": compile_onnx}[sys.argv[2]]
before, start = peak_kb(), time.process_time()
try:
    run(sys.argv[1])
    outcome = ["ok", ""]
except ToolchainError as exc:
    outcome = [type(exc).__name__, str(exc)]
print(json.dumps({"outcome": outcome, "seconds": time.process_time() - start,
                  "extra_mb": (peak_kb() - before) / 1024}))
"""


def _probe(path, mode="import"):
    """(error class name or "ok", message, seconds, extra resident MB) of a fresh process."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, "-c", PROBE, str(path), mode], capture_output=True,
                       text=True, timeout=120, env=env, cwd=ROOT, preexec_fn=limit)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    return (*report["outcome"], report["seconds"], report["extra_mb"])


def _model(nodes, inits=(), in_shape=("N", 4), out_shape=("N", 4), opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             list(out_shape))], list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(tmp_path, model, name="m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


def _const(name, value):
    return helper.make_node("Constant", [], [name], name=name,
                            value=numpy_helper.from_array(np.array(value, np.int64)))


def _into_output(name):
    """Nodes that make the int64 tensor `name` feed y = x + float(Size(name)): the bomb is
    live, and Size is an op that ONNX data propagation expands element by element."""
    return [helper.make_node("Size", [name], ["size"], name="size"),
            helper.make_node("Cast", ["size"], ["sizef"], name="cast", to=TensorProto.FLOAT),
            helper.make_node("Add", ["x", "sizef"], ["y"], name="add")]


def _relu(src, dst, name):
    return helper.make_node("Relu", [src], [dst], name=name)


def _external(name, n_floats, location, offset=0):
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[n_floats],
                    data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", offset), ("length", 4 * n_floats)):
        entry = t.external_data.add()
        entry.key, entry.value = key, str(value)
    return t


def _sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


# --- shape inference and constant folding -------------------------------------------------------
@pytest.mark.parametrize("limit", [5 * 10 ** 7, 10 ** 12])
def test_range_over_constants_is_refused_without_materializing_it(tmp_path, limit):
    """A 300-byte model: Range(0, limit) over Constant nodes, read by Size. ONNX data propagation
    would build one shape entry per element (7 GB for 5·10⁷); inference runs without it and the
    derived shape is refused: by the size limit on inferred activations or, since a tensor
    computed from constants alone is a constant, by the constant-folding budget before it is
    evaluated."""
    m = _model([_const("s", 0), _const("l", limit), _const("d", 1),
                helper.make_node("Range", ["s", "l", "d"], ["r"], name="range")]
               + _into_output("r"))
    path = _save(tmp_path, m)
    assert path.stat().st_size < 400
    kind, message, seconds, extra_mb = _probe(path)
    assert kind in ("ShapeError", "ModelError"), message
    assert (f"inferred tensor 'r' has shape [{limit}]" in message
            and f"over the {2 ** 22}-element limit" in message) or \
        ("constant 'r'" in message and "refused before evaluating it" in message), message
    assert seconds < 10 and extra_mb < 200, (seconds, extra_mb)


def test_shape_computed_in_the_graph_is_bounded_before_folding(tmp_path):
    """Shape(x)[1]³ = 2048³ elements requested from ConstantOfShape: the size only appears while
    folding, and is refused before anything is evaluated."""
    m = _model([helper.make_node("Shape", ["x"], ["shape"], name="shape"), _const("one", 1),
                _const("axes", [0]),
                helper.make_node("Gather", ["shape", "one"], ["width"], name="width"),
                helper.make_node("Mul", ["width", "width"], ["w2"], name="w2"),
                helper.make_node("Mul", ["w2", "width"], ["w3"], name="w3"),
                helper.make_node("Unsqueeze", ["w3", "axes"], ["dims"], name="dims"),
                helper.make_node("ConstantOfShape", ["dims"], ["c"], name="fill",
                                 value=numpy_helper.from_array(np.array([1], np.int64)))]
               + _into_output("c")[:2] + [helper.make_node("Add", ["x", "sizef"], ["y"])],
               in_shape=["N", 2048], out_shape=["N", 2048])
    kind, message, seconds, extra_mb = _probe(_save(tmp_path, m))
    assert kind == "ShapeError", message
    assert "node 'fill' (ConstantOfShape" in message
    assert f"constant 'c' would have shape [{2048 ** 3}]" in message
    assert "refused before evaluating it" in message
    assert seconds < 10 and extra_mb < 200, (seconds, extra_mb)


def test_folded_constants_share_one_byte_budget(tmp_path):
    """10⁸ float32 zeros (400 MB) from a model carrying a few bytes of constants: under
    MAX_TENSOR_ELEMENTS, over the fold budget (2 × the constant data, at least 64 MiB)."""
    m = _model([helper.make_node("Shape", ["x"], ["shape"], name="shape"), _const("one", 1),
                _const("k", 10 ** 8 // 2048), _const("axes", [0]),
                helper.make_node("Gather", ["shape", "one"], ["width"], name="width"),
                helper.make_node("Mul", ["width", "k"], ["n"], name="n"),
                helper.make_node("Unsqueeze", ["n", "axes"], ["dims"], name="dims"),
                helper.make_node("ConstantOfShape", ["dims"], ["c"], name="fill")]
               + _into_output("c")[:2] + [helper.make_node("Add", ["x", "sizef"], ["y"])],
               in_shape=["N", 2048], out_shape=["N", 2048])
    kind, message, seconds, extra_mb = _probe(_save(tmp_path, m))
    assert kind == "ShapeError", message
    n = 10 ** 8 // 2048 * 2048
    assert f"constant 'c' would have shape [{n}] ({4 * n} bytes)" in message
    assert f"may take {64 * 1024 ** 2} bytes in all" in message
    assert seconds < 10 and extra_mb < 200, (seconds, extra_mb)


def test_shapes_computed_in_the_graph_still_fold(tmp_path):
    """Without data propagation, Shape → Gather → Concat → Reshape chains are resolved by
    folding and inferring again, one level per round (here two Reshapes in a row)."""
    nodes = [_relu("x", "a", "r0")]
    for k, src in enumerate(["a", "b"]):
        nodes += [helper.make_node("Shape", [src], [f"s{k}"]), _const(f"i{k}", [0]),
                  helper.make_node("Gather", [f"s{k}", f"i{k}"], [f"n{k}"]),
                  _const(f"rest{k}", [2, 2] if k == 0 else [-1]),
                  helper.make_node("Concat", [f"n{k}", f"rest{k}"], [f"t{k}"], axis=0),
                  helper.make_node("Reshape", [src, f"t{k}"], ["b" if k == 0 else "y"])]
    imported = import_onnx(_save(tmp_path, _model(nodes)))
    assert imported.graph[imported.graph.output]["shape"] == (4,)


# --- the file itself: what parsing costs, unused data ------------------------------------------
def test_packed_varint_bomb_is_refused_before_parsing(tmp_path):
    """8 MB of int64 zeros as packed varints (one byte each, 16 in protobuf's memory), in an
    unused initializer: the wire walk refuses it, nothing is parsed."""
    z = TensorProto(name="Z", data_type=TensorProto.INT64, dims=[8_000_000])
    z.int64_data.extend(np.zeros(8_000_000, np.int64))
    path = _save(tmp_path, _model([_relu("x", "y", "r")], [z]))
    kind, message, seconds, extra_mb = _probe(path)
    assert kind == "ModelError", message
    assert "parsing would allocate" in message and "refused before parsing" in message
    assert "TensorProto.int64_data" in message and "tensor 'Z'" in message
    assert seconds < 10 and extra_mb < 100, (seconds, extra_mb)


def test_many_small_messages_are_refused_before_parsing(tmp_path):
    """Three million empty nodes in 6 MB: ~150 bytes each once parsed."""
    head = _model([_relu("x", "y", "r")])
    graph = b"\x0a\x00" * 3_000_000 + head.graph.SerializeToString()
    head.ClearField("graph")
    n, length = len(graph), b""
    while True:
        length += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            break
    path = _save(tmp_path, head.SerializeToString() + b"\x3a" + length + graph)
    kind, message, seconds, extra_mb = _probe(path)
    assert kind == "ModelError", message
    assert "GraphProto.node alone accounts for" in message
    assert seconds < 10 and extra_mb < 100, (seconds, extra_mb)


def test_unused_initializers_and_dead_nodes_are_dropped(tmp_path):
    """An initializer and a node no output depends on never reach the converters (the dead
    node is an op the SFN graph could not express)."""
    unused = TensorProto(name="Z", data_type=TensorProto.INT64, dims=[100_000])
    unused.int64_data.extend(np.zeros(100_000, np.int64))
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    m = _model([helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), _relu("h", "y", "r"),
                helper.make_node("Einsum", ["h"], ["dead"], name="dead", equation="bi->bi")],
               [w, unused])
    m.graph.input.append(helper.make_tensor_value_info("Z", TensorProto.INT64, [100_000]))
    compiled = compile_onnx(_save(tmp_path, m))
    assert compiled.artifact.output_shape == (4,)
    model, _ = loader.read_model(tmp_path / "m.onnx")
    assert [t.name for t in model.graph.initializer] == ["W"]
    assert [n.name for n in model.graph.node] == ["mm", "r"]
    assert [v.name for v in model.graph.input] == ["x"]


def test_nesting_deeper_than_the_limit_is_refused(tmp_path):
    def branch(nodes, name):
        return helper.make_graph(nodes, name, [],
                                 [helper.make_tensor_value_info("v", TensorProto.FLOAT, None)])
    leaf = branch([_relu("x", "v", "r")], "leaf")
    body = leaf
    for k in range(22):  # each If adds graph → node → attribute → graph: 70 levels in all
        body = branch([helper.make_node("If", ["c"], ["v"], then_branch=body, else_branch=leaf)],
                      f"b{k}")
    m = _model([helper.make_node("If", ["c"], ["y"], name="if", then_branch=body,
                                 else_branch=leaf)], [numpy_helper.from_array(np.array(True), "c")])
    assert len(m.SerializeToString()) < 10_000
    with pytest.raises(ModelError, match="nested more than 64 deep.*refused before parsing"):
        import_onnx(_save(tmp_path, m))


# --- external data --------------------------------------------------------------------------------
def test_external_tensors_sharing_bytes_are_refused(tmp_path):
    """Four unused 50 M-float tensors all pointing at one sparse 200 MB file."""
    _sparse_file(tmp_path / "big.bin", 200_000_000)
    m = _model([_relu("x", "y", "r")], [_external(f"E{k}", 50_000_000, "big.bin")
                                        for k in range(4)])
    path = _save(tmp_path, m)
    assert path.stat().st_size < 600
    kind, message, seconds, extra_mb = _probe(path)
    assert kind == "ModelError", message
    assert "external data of tensors 'E0' (bytes 0–200000000) and 'E1' (bytes 0–200000000) " \
           "overlap in 'big.bin'" in message
    assert seconds < 10 and extra_mb < 100, (seconds, extra_mb)


def test_unused_external_tensors_are_never_read(tmp_path):
    """Four unused 200 MB tensors side by side in a sparse 800 MB file: dropped before reading."""
    _sparse_file(tmp_path / "big.bin", 800_000_000)
    m = _model([_relu("x", "y", "r")], [_external(f"E{k}", 50_000_000, "big.bin",
                                                  k * 200_000_000) for k in range(4)])
    path = _save(tmp_path, m)
    kind, message, seconds, extra_mb = _probe(path)
    assert kind == "ok", message
    assert seconds < 10 and extra_mb < 100, (seconds, extra_mb)
    assert compile_onnx(path).artifact.output_shape == (4,)


def test_external_data_total_is_bounded(tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(onnx.load(nets.onnx_path("mlp")), folder / "m.onnx",
                    save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    monkeypatch.setattr(loader, "MAX_EXTERNAL_BYTES", 3000)
    with pytest.raises(InputFileError, match="the model's external data adds up to [0-9]+ bytes "
                                             "so far, over the 3000-byte limit"):
        compile_onnx(folder / "m.onnx")


@pytest.mark.parametrize("op", ["Conv", "MatMul"])
def test_real_200_mb_model_imports_within_1_gb(tmp_path, op):
    """50 M float weights (200 MB, external, sparse zeros) as a 1×1 Conv or a MatMul: the
    import's peak memory stays under 1 GB above the process's start (the file's data is held
    twice, as the model and as an array, and once more as the float64 layer weights)."""
    _sparse_file(tmp_path / "w.bin", 200_000_000)
    w = _external("W", 50_000_000, "w.bin")
    if op == "Conv":
        w.dims[:] = [5_000, 10_000, 1, 1]
        shapes = dict(in_shape=["N", 10_000, 1, 1], out_shape=["N", 5_000, 1, 1])
    else:
        w.dims[:] = [10_000, 5_000]
        shapes = dict(in_shape=["N", 10_000], out_shape=["N", 5_000])
    m = _model([helper.make_node(op, ["x", "W"], ["h"], name="layer"), _relu("h", "y", "r")],
               [w], **shapes)
    kind, message, seconds, extra_mb = _probe(_save(tmp_path, m))
    assert kind == "ok", message
    assert extra_mb < 1024 and seconds < 10, (seconds, extra_mb)


# --- quadratic checks ---------------------------------------------------------------------------
def _chain(n):
    return [_relu("x" if k == 0 else f"t{k - 1}", "y" if k == n - 1 else f"t{k}", f"n{k}")
            for k in range(n)]


def test_100k_nodes_in_reverse_order_are_refused_in_linear_time(tmp_path):
    path = _save(tmp_path, _model(_chain(100_000)[::-1]))
    start = time.process_time()
    with pytest.raises(ModelError, match="node 'n99999' \\(Relu\\) reads the output of node "
                                         "'n99998' \\(Relu\\), which comes later"):
        import_onnx(path)
    assert time.process_time() - start < 10


def test_100k_node_cycle_is_named_briefly(tmp_path):
    nodes = _chain(100_000)
    nodes[0] = helper.make_node("Add", ["x", "t99998"], ["t0"], name="n0")
    nodes[-1] = _relu("t99998", "y", "last")
    start = time.process_time()
    with pytest.raises(ModelError, match="the graph has a cycle: node 'n1' \\(Relu\\) → "
                                         "node 'n2' \\(Relu\\) → .* → … "
                                         "\\(99999 nodes in all\\)$"):
        import_onnx(_save(tmp_path, _model(nodes)))
    assert time.process_time() - start < 10


@pytest.mark.slow      # ~9 s
def test_100k_graph_outputs_are_refused_in_linear_time(tmp_path):
    m = _model([_relu("x", f"o{k}", f"r{k}") for k in range(100_000)])
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(f"o{k}", TensorProto.FLOAT, ["N", 4])
                          for k in range(100_000))
    path = _save(tmp_path, m)
    start = time.process_time()
    with pytest.raises(UnsupportedOpError, match="the model has 100000 outputs; exactly one"):
        import_onnx(path)
    assert time.process_time() - start < 10
    m.graph.output.append(m.graph.output[5])
    start = time.process_time()
    with pytest.raises(ModelError, match="graph output 'o5' is listed 2 times"):
        loader.check_graph(m.graph, "m.onnx")
    assert time.process_time() - start < 5


# --- inputs that used to crash ------------------------------------------------------------------
def test_zero_sized_initializer_is_named(tmp_path):
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 0])
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [w],
               out_shape=["N", 0])
    with pytest.raises(ShapeError, match="node 'mm' \\(MatMul.*constant input 'W' has shape "
                                         "\\[4, 0\\], zero elements"):
        compile_onnx(_save(tmp_path, m))


def test_scalar_float_initializer_in_a_typed_field_imports(tmp_path):
    """A 0-d float initializer stored in float_data (not raw_data), as older exporters write a
    Mul's scalar operand: its values are checked like any other's."""
    s = TensorProto(name="S", data_type=TensorProto.FLOAT, dims=[], float_data=[0.5])
    m = _model([helper.make_node("Mul", ["x", "S"], ["y"], name="mul")], [s])
    art = compile_onnx(_save(tmp_path, m)).artifact
    assert art.meta["agreement"]["rel_rms_error"] < 0.05
    bad = TensorProto(name="S", data_type=TensorProto.FLOAT, dims=[], float_data=[np.nan])
    m = _model([helper.make_node("Mul", ["x", "S"], ["y"], name="mul")], [bad])
    with pytest.raises(ModelError, match="'S' has 1 NaN/Inf values"):
        compile_onnx(_save(tmp_path, m, "nan.onnx"))


@pytest.mark.parametrize("where", ["input", "initializer"])
def test_rank_over_32_is_refused(tmp_path, where):
    if where == "input":
        m = _model([_relu("x", "y", "r")], in_shape=["N"] + [1] * 100,
                   out_shape=["N"] + [1] * 100)
        expected = (ShapeError, "graph input 'x' has rank 101, over the limit of 32")
    else:
        b = TensorProto(name="B", data_type=TensorProto.FLOAT, dims=[1] * 101, raw_data=b"\0" * 4)
        m = _model([helper.make_node("Add", ["x", "B"], ["y"], name="add")], [b])
        expected = (ShapeError, "tensor 'B' has 101 dimensions, over the limit of 32")
    with pytest.raises(expected[0], match=expected[1]):
        compile_onnx(_save(tmp_path, m))


def _rename(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1 and len(old) == len(new)
    return data.replace(old, new)


def test_non_utf8_names_are_refused(tmp_path):
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "Wq")
    m = _model([helper.make_node("MatMul", ["x", "Wq"], ["y"], name="mm")], [w])
    data = _rename(m.SerializeToString(), b"\x0a\x02Wq", b"\x0a\x02W\xff")  # the input's name
    with pytest.raises(ModelError, match="input b'W\\\\xff' is not UTF-8 text \\(in graph 'g', "
                                         "node 'mm'\\)"):
        compile_onnx(_save(tmp_path, data))
    data = _rename(m.SerializeToString(), b"\x42\x02Wq", b"\x42\x02W\xff")  # the tensor's name
    with pytest.raises(ModelError, match="tensor name b'W\\\\xff' is not UTF-8 text "
                                         "\\(in graph 'g'\\)"):
        compile_onnx(_save(tmp_path, data))
    r = CliRunner().invoke(main, ["compile", str(tmp_path / "m.onnx"), "-o",
                                  str(tmp_path / "m.sfn")])
    assert r.exit_code == 2 and r.output.startswith("error:") and "Traceback" not in r.output
    assert "is not UTF-8 text" in r.output and len(r.output.strip().splitlines()) == 1


def test_non_utf8_external_location_is_refused(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"\0" * 64)
    w = _external("W", 16, "w.bin")
    w.dims[:] = [4, 4]
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [w])
    data = _rename(m.SerializeToString(), b"w.bin", b"w\xff.bi")
    with pytest.raises(ModelError, match="value b'w\\\\xff.bi' is not UTF-8 text \\(in graph "
                                         "'g', tensor 'W'\\)"):
        compile_onnx(_save(tmp_path, data))


# --- .npy inputs --------------------------------------------------------------------------------
def _npy(array=None, header=None, data=b"", version=(1, 0)) -> bytes:
    buf = io.BytesIO()
    if header is None:
        np.save(buf, array, allow_pickle=True)
        return buf.getvalue()
    write = np.lib.format.write_array_header_1_0 if version == (1, 0) \
        else np.lib.format.write_array_header_2_0
    write(buf, header)
    return buf.getvalue() + data


def test_npy_reads_plain_arrays(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for name, blob in [("c.npy", _npy(x)), ("f.npy", _npy(np.asfortranarray(x))),
                       ("v2.npy", _npy(header={"descr": "<f4", "fortran_order": False,
                                               "shape": (2, 3, 4)}, data=x.tobytes(),
                                       version=(2, 0)))]:
        (tmp_path / name).write_bytes(blob)
        y = load_user_npy(tmp_path / name, "input", min_rows=1)
        assert y.dtype == np.float32 and np.array_equal(y, x), name


def test_npy_header_bomb_is_refused_before_allocating(tmp_path):
    """The header claims 10¹⁰ samples of 3×224×224 float32 (6 PB): refused from the header."""
    path = tmp_path / "x.npy"
    path.write_bytes(_npy(header={"descr": "<f4", "fortran_order": False,
                                  "shape": (10 ** 10, 3, 224, 224)}, data=b"\0" * 64))
    start = time.process_time()
    with pytest.raises(InputFileError, match=f"x.npy: the header declares float32 \\(10000000000, "
                                             f"3, 224, 224\\), {10 ** 10 * 3 * 224 * 224 * 4} "
                                             "bytes of data, over the 2147483648-byte limit"):
        load_user_npy(path, "input")
    assert time.process_time() - start < 1
    with pytest.raises(InputFileError, match="the header declares float32 \\(4, 4\\), 64 bytes of "
                                             "data, over the 63-byte limit"):
        path.write_bytes(_npy(np.zeros((4, 4), np.float32)))
        load_user_npy(path, "input", max_bytes=63)


@pytest.mark.parametrize("case,message", [
    ("short", "x.npy: the header declares float32 (4, 4), 64 bytes of data, but the file holds "
              "60: truncated"),
    ("long", "but the file holds 66: trailing bytes"),
    ("zero_rows", "x.npy: 0 rows (shape (0, 1, 8, 8)); the calibration needs at least 1"),
    ("zero_d", "x.npy: a 0-d array (a single float32 value)"),
    ("object", "x.npy: the array holds Python objects (pickled data); refused"),
    ("strings", "x.npy: dtype <U3 is not a plain number type"),
    ("records", "x.npy: dtype |V8 is not a plain number type"),
    ("damaged", "x.npy: damaged .npy header"),
    ("version3", "x.npy: .npy format version 3.0; versions 1.0 and 2.0 are read"),
    ("npz", "x.npy: not a .npy file (it starts like a zip archive, such as an .npz file"),
    ("png", "x.npy: not a .npy file (it starts like a PNG image); give the calibration array "
            "saved with numpy.save"),
    ("csv", "x.npy: not a .npy file (it starts like CSV text: '0.1,0.2,0.3')"),
    ("pickle", "x.npy: not a .npy file (it starts like a Python pickle, which is never loaded)"),
    ("empty", "x.npy: not a .npy file (it is empty)"),
    ("missing", "x.npy: no such calibration file"),
])
def test_npy_refusals_name_the_problem(tmp_path, case, message):
    path = tmp_path / "x.npy"
    good = _npy(np.zeros((4, 4), np.float32))
    blob = {
        "short": good[:-4], "long": good + b"xx",
        "zero_rows": _npy(np.zeros((0, 1, 8, 8), np.float32)),
        "zero_d": _npy(np.float32(1)),
        "object": _npy(np.array([{"evil": 1}], dtype=object)),
        "strings": _npy(np.array(["abc"])),
        "records": _npy(np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])),
        "damaged": good.replace(b"'shape': (4, 4)", b"'shape': (4, 4 "),
        "version3": b"\x93NUMPY\x03\x00" + good[8:],
        "npz": None, "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
        "csv": b"0.1,0.2,0.3\n0.4,0.5,0.6\n", "pickle": pickle.dumps(np.ones(3)),
        "empty": b"", "missing": None,
    }[case]
    if case == "npz":
        with open(path, "wb") as f:
            np.savez(f, x=np.ones(3))
    elif blob is not None:
        path.write_bytes(blob)
    with pytest.raises(InputFileError) as err:
        load_user_npy(path, "calibration", min_rows=1)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_npy_never_unpickles(tmp_path, monkeypatch):
    """No code path reaches pickle: a pickled object array is refused from its header."""
    import pickle as pickle_module

    def refuse(*args, **kwargs):
        raise AssertionError("pickle.load called")
    monkeypatch.setattr(pickle_module, "load", refuse)
    monkeypatch.setattr(pickle_module, "loads", refuse)
    path = tmp_path / "x.npy"
    path.write_bytes(_npy(np.array([1, "a", None], dtype=object)))
    with pytest.raises(InputFileError, match="holds Python objects"):
        load_user_npy(path, "input")
