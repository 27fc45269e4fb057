"""Bad input gives one clear line, exit code 2, no traceback, and no output file."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

import nets
from toolchain.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    compiled, calib, test = nets.compiled("avgpool_cnn")
    np.save(d / "calib.npy", calib)
    np.save(d / "x.npy", test)
    model = nets.onnx_path("avgpool_cnn")
    assert invoke("compile", model, "-o", d / "m.sfn", "--calib", d / "calib.npy").exit_code == 0
    return d, model


def _assert_clean_failure(result, out: Path, *needles):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error:")
    for needle in needles:
        assert needle in result.output, result.output
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temp file left behind


def test_missing_model(tmp_path):
    out = tmp_path / "o.sfn"
    _assert_clean_failure(invoke("compile", tmp_path / "nope.onnx", "-o", out), out,
                          "nope.onnx", "no such file")


def test_not_onnx(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    out = tmp_path / "o.sfn"
    _assert_clean_failure(invoke("compile", tmp_path / "junk.onnx", "-o", out), out,
                          "not an ONNX model")


def test_truncated_model(tmp_path, good):
    data = Path(good[1]).read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.sfn"
    r = invoke("compile", tmp_path / "cut.onnx", "-o", out)
    _assert_clean_failure(r, out, "cut.onnx")


def _model(nodes, inits=(), opset=17, in_shape=("N", 4)):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_unsupported_op_names_op_node_opset_and_lists_supported(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["h"], name="act"),
                helper.make_node("Einsum", ["h"], ["y"], name="weird_einsum", equation="bi->bi")])
    onnx.save(m, tmp_path / "u.onnx")
    out = tmp_path / "o.sfn"
    _assert_clean_failure(invoke("compile", tmp_path / "u.onnx", "-o", out), out,
                          "'Einsum'", "weird_einsum", "opset 17", "Supported ops:", "Conv", "Gemm")


def test_power_of_two_activations_is_refused(tmp_path):
    # relu(x) ** relu(W·x): an exponent that is an activation has no integer form
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 4], np.eye(4).ravel().tolist())
    m = _model([helper.make_node("Relu", ["x"], ["a"]), helper.make_node("MatMul", ["x", "W"], ["h"]),
                helper.make_node("Relu", ["h"], ["b"]),
                helper.make_node("Pow", ["a", "b"], ["y"], name="power")], inits=[w])
    onnx.save(m, tmp_path / "m.onnx")
    out = tmp_path / "o.sfn"
    _assert_clean_failure(invoke("compile", tmp_path / "m.onnx", "-o", out), out, "power",
                          "the exponent (input 1, 'b') must be a constant")


def test_dynamic_feature_dimension(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"])], in_shape=("N", "F"))
    onnx.save(m, tmp_path / "d.onnx")
    out = tmp_path / "o.sfn"
    _assert_clean_failure(invoke("compile", tmp_path / "d.onnx", "-o", out), out,
                          "dimension 1 is dynamic")


def test_unsupported_opset(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"])], opset=22)
    onnx.save(m, tmp_path / "o22.onnx")
    out = tmp_path / "o.sfn"
    _assert_clean_failure(invoke("compile", tmp_path / "o22.onnx", "-o", out), out, "opset 22",
                          "11 to 21", "opset_version=21")


def test_calibration_shape_mismatch(tmp_path, good):
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 8, 8), np.float32))
    out = tmp_path / "o.sfn"
    _assert_clean_failure(invoke("compile", good[1], "-o", out, "--calib", tmp_path / "bad.npy"),
                          out, "(4, 3, 8, 8)", "(N, 1, 8, 8)")


def test_run_input_shape_mismatch(tmp_path, good):
    np.save(tmp_path / "bad.npy", np.zeros((4, 8, 8), np.float32))
    out = tmp_path / "y.npy"
    _assert_clean_failure(invoke("run", good[0] / "m.sfn", "--input", tmp_path / "bad.npy",
                                 "--output", out), out, "(4, 8, 8)", "(N, 1, 8, 8)")


def test_run_nan_and_wrong_dtype(tmp_path, good):
    x = np.load(good[0] / "x.npy")
    x[3, 0, 2, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    np.save(tmp_path / "f64.npy", x.astype(np.float64) * 1e300)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out = tmp_path / "y.npy"
    _assert_clean_failure(invoke("run", good[0] / "m.sfn", "--input", tmp_path / "nan.npy",
                                 "--output", out), out, "NaN")
    _assert_clean_failure(invoke("run", good[0] / "m.sfn", "--input", tmp_path / "f64.npy",
                                 "--output", out), out, "f64.npy", "beyond float32's range")
    _assert_clean_failure(invoke("run", good[0] / "m.sfn", "--input", tmp_path / "obj.npy",
                                 "--output", out), out, "holds Python objects")


def test_corrupt_artifact(tmp_path, good):
    data = bytearray((good[0] / "m.sfn").read_bytes())
    rng = np.random.default_rng(0)
    for offset in [40, len(data) // 2, len(data) - 10] + list(rng.integers(0, len(data), 12)):
        bad = bytearray(data)
        bad[offset] ^= 0x5A
        (tmp_path / "bad.sfn").write_bytes(bytes(bad))
        out = tmp_path / "y.npy"
        _assert_clean_failure(invoke("run", tmp_path / "bad.sfn", "--input", good[0] / "x.npy",
                                     "--output", out), out, "bad.sfn")


def test_foreign_and_future_artifacts(tmp_path, good):
    out = tmp_path / "y.npy"
    (tmp_path / "text.sfn").write_text("hello")
    _assert_clean_failure(invoke("inspect", tmp_path / "text.sfn"), out, "not an .sfn artifact")
    with zipfile.ZipFile(tmp_path / "other.sfn", "w") as zf:
        zf.writestr("readme.txt", "a zip, but not ours")
    _assert_clean_failure(invoke("inspect", tmp_path / "other.sfn"), out, "no manifest.json")
    with zipfile.ZipFile(good[0] / "m.sfn") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members["manifest.json"])
    manifest["version"] = 99
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(tmp_path / "future.sfn", "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    _assert_clean_failure(invoke("inspect", tmp_path / "future.sfn"), out, "version 99",
                          "versions 1 to 1")


def test_real_process_exit_code_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "toolchain.cli", "compile", str(tmp_path / "x.onnx"),
                        "-o", str(tmp_path / "o.sfn")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "no such file" in r.stderr
    assert not (tmp_path / "o.sfn").exists()


def test_compile_run_inspect_json(tmp_path, good):
    d, model = good
    r = invoke("compile", model, "-o", tmp_path / "m.sfn", "--calib", d / "calib.npy",
               "--emit-reference", tmp_path / "ref.onnx", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["agreement"]["top1_agreement"] >= 0.9
    assert [row["op"] for row in report["layers"]][:3] == ["input", "conv", "neuron"]
    r = invoke("run", tmp_path / "m.sfn", "--input", d / "x.npy", "--output", tmp_path / "y.npy",
               "--json")
    assert r.exit_code == 0, r.output
    y = np.load(tmp_path / "y.npy")
    import onnxruntime as ort
    ref = ort.InferenceSession(str(tmp_path / "ref.onnx")).run(["output"], {"input": np.load(d / "x.npy")})[0]
    assert np.array_equal(y, ref)  # no final softmax in this model: Y is the readout itself
    r = invoke("run", tmp_path / "m.sfn", "--input", d / "x.npy", "--output", tmp_path / "y1.npy",
               "--threads", 1)
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "y1.npy").tobytes() == y.tobytes()
    r = invoke("run", tmp_path / "m.sfn", "--input", d / "x.npy", "--output", tmp_path / "y0.npy",
               "--threads", 0)
    assert r.exit_code == 2 and "--threads" in r.output and not (tmp_path / "y0.npy").exists()
    info = json.loads(invoke("inspect", tmp_path / "m.sfn", "--json").output)
    assert info["nodes"][0]["kind"] == "input" and info["nodes"][-1]["kind"] == "readout"
    assert any(k.endswith("/weight_scale") for k in info["record"])
