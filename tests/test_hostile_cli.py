"""Hostile use of the CLI, tried as an attacker would: outputs onto special files, folders,
missing or read-only folders, a full disk, the command's own inputs; file names and tensor names
that look like markup; forged artifacts; a Lava run killed by a signal; messages that must be
one clear line. Each refusal: exit code 2, exactly one line on stderr starting `error: `, no
traceback, no file left behind or replaced, within a generous time bound (and, where a file
declares a size bomb, an address-space limit). docs/reliability.md lists each case with its test.
"""
from __future__ import annotations

import copy
import errno
import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import nets
import sim.cpu
import sim.reference
from sim import artifact
from test_forged import _write_unchecked, feed_forward
from toolchain.cli import main

ROOT = Path(__file__).resolve().parents[1]
BOUND_S = 120        # generous: a refusal takes well under a second on an idle machine
MEMORY = 4 << 30     # the address-space limit of the size-bomb cases


# --- running the CLI and judging the outcome ----------------------------------------------------
@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def invoke(*args, **env) -> Outcome:
    """`toolchain ARGS` in this process (click's runner)."""
    start = time.monotonic()
    r = CliRunner().invoke(main, [str(a) for a in args], env=env or None)
    return Outcome(r.exit_code, r.stdout, r.stderr, time.monotonic() - start)


def cli(*args, cwd=None, memory: int = MEMORY, umask: int | None = None) -> Outcome:
    """`toolchain ARGS` in a fresh process, under an address-space limit."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if umask is not None:
            os.umask(umask)
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "toolchain.cli", *map(str, args)], cwd=cwd or ROOT,
                       capture_output=True, text=True, timeout=BOUND_S, preexec_fn=limit,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    return Outcome(r.returncode, r.stdout, r.stderr, time.monotonic() - start)


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] if folder.is_dir() \
        else []


def assert_refused(r: Outcome, *needles, absent=(), unchanged: dict | None = None) -> str:
    """Exit 2, one `error: ` line on stderr naming every needle, no traceback anywhere, none of
    `absent` written (nor a temp file beside it), every file in `unchanged` byte-identical."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    for path in absent:
        assert not os.path.lexists(path), path
        assert temp_files(Path(path).parent) == []
    for path, data in (unchanged or {}).items():
        assert Path(path).read_bytes() == data, path
    assert r.seconds < BOUND_S
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A compiled avgpool CNN (m.sfn), its model, calibration and test inputs, labels."""
    d = tmp_path_factory.mktemp("hostile_cli")
    compiled, calib, test = nets.compiled("avgpool_cnn")
    compiled.save(d / "m.sfn")
    np.save(d / "calib.npy", calib[:64])
    np.save(d / "x.npy", test[:40])
    np.save(d / "labels.npy", np.arange(40) % 10)
    (d / "m.onnx").write_bytes(nets.onnx_path("avgpool_cnn").read_bytes())
    return d


def run_args(d: Path, out, *more):
    return ("run", d / "m.sfn", "--input", d / "x.npy", "--output", out, *more)


# --- 1. special files as outputs ------------------------------------------------------------------
def test_output_to_a_fifo_is_written_in_place(files, tmp_path):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    got = {}
    reader = threading.Thread(target=lambda: got.setdefault("data", fifo.read_bytes()))
    reader.start()
    r = invoke(*run_args(files, fifo))
    reader.join(BOUND_S)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    y = np.load(__import__("io").BytesIO(got["data"]))
    assert y.shape == (40, 10) and temp_files(tmp_path) == []


def test_output_onto_a_socket_is_refused(files, tmp_path):
    path = tmp_path / "s.npy"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        assert_refused(invoke(*run_args(files, path)), f"cannot write {path}: it is a socket")
        assert stat.S_ISSOCK(os.stat(path).st_mode)


@pytest.fixture
def device():
    """A real device node, restored should a test ever replace it (only root can)."""
    saved = []

    def use(path: str) -> str:
        st = os.stat(path)
        saved.append((path, st.st_mode, st.st_rdev))
        return path
    yield use
    for path, mode, rdev in saved:
        if not stat.S_ISCHR(os.lstat(path).st_mode):
            os.unlink(path)
            os.mknod(path, mode, rdev)
            pytest.fail(f"{path} was replaced by a regular file (restored)")


@pytest.mark.skipif(os.geteuid() != 0, reason="as root a rename could replace a device node")
def test_dev_full_reports_no_space_and_stays_a_device(files, device):
    assert_refused(invoke(*run_args(files, device("/dev/full"))),
                   "cannot write /dev/full: no space left on device")
    r = invoke("compile", files / "m.onnx", "-o", "/dev/full")
    assert_refused(r, "cannot write /dev/full: no space left on device")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="as root a rename could replace a device node")
def test_dev_null_takes_the_output_and_stays_a_device(files, device):
    r = invoke("compile", files / "m.onnx", "-o", device("/dev/null"), "--emit-reference",
               "/dev/null")
    assert r.returncode == 2 and "both name /dev/null" in r.stderr   # two outputs, one file
    r = invoke(*run_args(files, "/dev/null"))
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# --- 3. brackets and other markup in user text -----------------------------------------------------
@pytest.mark.parametrize("name", ["nope[/]x.onnx", "nope[red]x.onnx", "a:smile:b.onnx"])
def test_markup_in_a_path_is_printed_as_it_is(tmp_path, name):
    assert_refused(invoke("compile", tmp_path / name, "-o", tmp_path / "a.sfn"),
                   f"{tmp_path / name}: no such file", absent=[tmp_path / "a.sfn"])


def _relu_mlp(path: Path, hidden: str) -> Path:
    """x → Gemm → Relu (output tensor named `hidden`) → Gemm → y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "W1"),
             numpy_helper.from_array(rng.normal(size=(3, 6)).astype(np.float32), "W2")]
    nodes = [helper.make_node("Gemm", ["x", "W1"], ["h0"], transB=1),
             helper.make_node("Relu", ["h0"], [hidden]),
             helper.make_node("Gemm", [hidden, "W2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("hidden", ["h[/]", "h[bold]", r"a$\frac$b"])
def test_markup_in_tensor_names_reaches_tables_and_figures_as_it_is(tmp_path, hidden):
    model = _relu_mlp(tmp_path / "m.onnx", hidden)
    r = invoke("compile", model, "-o", tmp_path / "m.sfn")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert hidden in r.stdout
    r = invoke("inspect", tmp_path / "m.sfn")
    assert r.returncode == 0 and hidden in r.stdout
    np.save(tmp_path / "x.npy", np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32))
    r = invoke("report", tmp_path / "m.sfn", "--input", tmp_path / "x.npy", "--out",
               tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    assert hidden in r.stdout
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == \
        ["activity.png", "cores.png", "energy.png", "report.json"]


# --- 4. output paths that cannot be written ----------------------------------------------------------
def test_output_into_a_missing_folder(files, tmp_path):
    out = tmp_path / "nodir" / "y.npy"
    assert_refused(invoke(*run_args(files, out)), f"cannot write {out}: folder",
                   "does not exist", absent=[out])
    out = tmp_path / "nodir" / "a.sfn"
    assert_refused(invoke("compile", files / "m.onnx", "-o", out), "does not exist",
                   absent=[out])


def test_output_onto_a_folder(files, tmp_path):
    assert_refused(invoke(*run_args(files, tmp_path)), f"cannot write {tmp_path}: it is a folder")
    assert tmp_path.is_dir()


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody may write into: immutable as root (chattr +i), else mode 0555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("root, and the file system has no immutable attribute")
    else:
        folder.chmod(0o555)
    yield folder
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_output_into_a_read_only_folder(files, read_only):
    out = read_only / "y.npy"
    line = assert_refused(invoke(*run_args(files, out)), f"cannot write {out}: ",
                          absent=[out])
    assert line.endswith(("permission denied", "read-only file system")), line


def test_full_disk_leaves_no_file(files, tmp_path, monkeypatch):
    import sim.files

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(sim.files, "_write_fd", full)
    out = tmp_path / "y.npy"
    assert_refused(invoke(*run_args(files, out)),
                   f"cannot write {out}: no space left on device", absent=[out])


def test_file_size_limit_is_reported_with_the_path(files, tmp_path):
    """The operating system's own refusal (RLIMIT_FSIZE: EFBIG) in a real process."""
    out = tmp_path / "m.sfn"

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    r = subprocess.run([sys.executable, "-m", "toolchain.cli", "compile", str(files / "m.onnx"),
                        "-o", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=BOUND_S, preexec_fn=small_files)
    assert_refused(Outcome(r.returncode, r.stdout, r.stderr, 0), f"cannot write {out}: ",
                   "file too large", absent=[out])


def test_report_out_onto_a_file(files, tmp_path):
    target = tmp_path / "afile"
    target.write_bytes(b"keep")
    assert_refused(invoke("report", files / "m.sfn", "--input", files / "x.npy", "--out",
                          target), f"cannot write into {target}: it is a regular file",
                   unchanged={target: b"keep"})


def test_report_into_a_missing_folder_creates_it_and_nothing_on_failure(files, tmp_path,
                                                                         monkeypatch):
    import sim.files
    out = tmp_path / "a" / "b"

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(sim.files, "_write_fd", full)
    assert_refused(invoke("report", files / "m.sfn", "--input", files / "x.npy", "--out", out),
                   "no space left on device")
    assert not (tmp_path / "a").exists()
    monkeypatch.undo()
    r = invoke("report", files / "m.sfn", "--input", files / "x.npy", "--out", out)
    assert r.returncode == 0 and (out / "report.json").is_file()


def test_failing_output_leaves_no_reference_onnx(files, tmp_path):
    ref, out = tmp_path / "ref.onnx", tmp_path / "nodir" / "a.sfn"
    assert_refused(invoke("compile", files / "m.onnx", "-o", out, "--emit-reference", ref),
                   "does not exist", absent=[out, ref])


@pytest.mark.parametrize("command", ["compile", "run", "report"])
def test_outputs_are_checked_before_the_work(files, tmp_path, monkeypatch, command):
    """A path error arrives before the compile, the run or the mapping starts."""
    def must_not_start(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")
    import toolchain.cli.report
    import toolchain.compiler
    monkeypatch.setattr(toolchain.compiler, "compile_onnx", must_not_start)
    monkeypatch.setattr(sim.cpu, "run", must_not_start)
    monkeypatch.setattr(toolchain.cli.report, "map_artifact", must_not_start)
    out = tmp_path / "nodir" / "out"
    args = {"compile": ("compile", files / "m.onnx", "-o", out),
            "run": run_args(files, out),
            "report": ("report", files / "m.sfn", "--input", files / "x.npy", "--out",
                       files / "m.sfn" / "sub")}[command]
    assert_refused(invoke(*args), "cannot ")


# --- 6. an output that is one of the inputs -----------------------------------------------------------
def test_compile_refuses_to_replace_its_model_or_calibration(files, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes((files / "m.onnx").read_bytes())
    keep = {model: model.read_bytes(), files / "calib.npy": (files / "calib.npy").read_bytes()}
    assert_refused(invoke("compile", model, "-o", model), "it is the model", unchanged=keep)
    assert_refused(invoke("compile", model, "--calib", files / "calib.npy", "-o",
                          tmp_path / "o.sfn", "--emit-reference", files / "calib.npy"),
                   "it is the calibration data", unchanged=keep)


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_run_refuses_to_replace_its_input(files, tmp_path, link):
    x = tmp_path / "x.npy"
    x.write_bytes((files / "x.npy").read_bytes())
    out = {"same": x, "symlink": tmp_path / "y.npy", "hardlink": tmp_path / "z.npy"}[link]
    if link == "symlink":
        out.symlink_to(x)
    elif link == "hardlink":
        os.link(x, out)
    data = x.read_bytes()
    r = invoke("run", files / "m.sfn", "--input", x, "--output", out)
    assert_refused(r, "it is the input", unchanged={x: data})


def test_run_refuses_to_replace_its_labels_or_artifact(files, tmp_path):
    keep = {p: p.read_bytes() for p in (files / "labels.npy", files / "m.sfn")}
    assert_refused(invoke(*run_args(files, files / "labels.npy", "--labels",
                                    files / "labels.npy")), "it is the labels", unchanged=keep)
    assert_refused(invoke(*run_args(files, files / "m.sfn")), "it is the artifact",
                   unchanged=keep)


def test_report_refuses_to_replace_its_input(files, tmp_path):
    folder = tmp_path / "rep"
    folder.mkdir()
    x = folder / "report.json"          # an input named like the report it would write
    x.write_bytes((files / "x.npy").read_bytes())
    assert_refused(invoke("report", files / "m.sfn", "--input", x, "--out", folder),
                   "it is the input", unchanged={x: x.read_bytes()})


# --- inputs read through toolchain.npyio ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_an_input_that_is_not_a_file_is_named_and_never_opened(files, tmp_path, kind):
    x = tmp_path / "x.npy"
    os.mkfifo(x) if kind == "fifo" else x.mkdir()     # opening the FIFO would block
    out = tmp_path / "y.npy"
    line = assert_refused(invoke("run", files / "m.sfn", "--input", x, "--output", out),
                          f"{x}: a ", absent=[out])
    assert ("FIFO" if kind == "fifo" else "folder") in line


def test_cli_inputs_are_read_header_first(files, tmp_path):
    """The CLI reads --input and --calib with toolchain.npyio: an empty calibration set, an
    image under a .npy name."""
    np.save(tmp_path / "empty.npy", np.zeros((0, 1, 8, 8), np.float32))
    out = tmp_path / "o.sfn"
    assert_refused(invoke("compile", files / "m.onnx", "--calib", tmp_path / "empty.npy", "-o",
                          out), "empty.npy: 0 rows", "at least 1", absent=[out])
    (tmp_path / "img.npy").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    out = tmp_path / "y.npy"
    assert_refused(invoke("run", files / "m.sfn", "--input", tmp_path / "img.npy", "--output",
                          out), "not a .npy file", "PNG image", absent=[out])


# --- 5. forged artifacts through the CLI ---------------------------------------------------------------
def _forge(tmp_path: Path, edit) -> Path:
    art = copy.deepcopy(feed_forward())
    edit(art)
    path = tmp_path / "forged.sfn"
    path.write_bytes(_write_unchecked(art))
    np.save(tmp_path / "x.npy", np.ones((3, 2, 6, 6), np.float32))
    return path


FORGERIES = {
    "timesteps 10^7": (lambda a: a.meta.update(timesteps=10 ** 7), "meta timesteps 10000000"),
    "2.5e9 neurons": (lambda a: setattr(a.nodes[0], "shape", (1, 50_000, 50_000)), "node 'x'"),
    "weight_exp 10^6": (lambda a: setattr(a.node("c1"), "weight_exp", 10 ** 6),
                        "node 'c1' (conv): weight_exp"),
    "NaN readout scale": (lambda a: setattr(a.node("y"), "scale", np.full(3, np.nan, np.float32)),
                          "node 'y' (readout): scale"),
    "inv_scale 'abc'": (lambda a: setattr(a.node("x"), "inv_scale", "abc"),
                        "node 'x' (input): inv_scale 'abc'"),
    "string in the record": (lambda a: a.record.update({"n1/act_scale": np.array(["x"])}),
                             "record 'n1/act_scale'"),
    "decay 4095.5": (lambda a: setattr(a.node("n1"), "decay", 4095.5),
                     "node 'n1' (neuron): decay 4095.5"),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
@pytest.mark.parametrize("command", ["run", "inspect", "report"])
def test_forged_artifacts_are_refused_naming_node_and_field(tmp_path, case, command):
    edit, needle = FORGERIES[case]
    path = _forge(tmp_path, edit)
    args = {"run": ("run", path, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy"),
            "inspect": ("inspect", path),
            "report": ("report", path, "--input", tmp_path / "x.npy", "--out",
                       tmp_path / "rep")}[command]
    r = cli(*args) if case == "2.5e9 neurons" else invoke(*args)
    assert_refused(r, f"{path}: ", needle, absent=[tmp_path / "y.npy", tmp_path / "rep"])


# --- 7. one line, and what it says ---------------------------------------------------------------------
def _bn_model(path: Path, var) -> Path:
    inits = [numpy_helper.from_array(np.eye(4, dtype=np.float32), "W"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")] + \
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in
         (("s", np.ones(4)), ("b", np.zeros(4)), ("m", np.zeros(4)), ("v", var))]
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1),
             helper.make_node("Unsqueeze", ["h", "axes"], ["h4"]),
             helper.make_node("BatchNormalization", ["h4", "s", "b", "m", "v"], ["bn"],
                              name="bn1", epsilon=0.0),
             helper.make_node("Relu", ["bn"], ["r"]), helper.make_node("Flatten", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _gemm_model(path: Path, w: np.ndarray, in_shape=("N", 4)) -> Path:
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(w.astype(np.float32), "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("var", [[-1, 1, 1, 1], [0, 1, 1, 1]])
def test_computed_nan_weights_are_named_without_warnings(tmp_path, var):
    out = tmp_path / "o.sfn"
    r = cli("compile", _bn_model(tmp_path / "bn.onnx", var), "-o", out)
    assert_refused(r, "node 'bn1' (BatchNormalization", "variance + epsilon is not positive",
                   absent=[out])


def test_weights_beyond_float32_name_the_overflow(tmp_path):
    out = tmp_path / "o.sfn"
    r = cli("compile", _gemm_model(tmp_path / "big.onnx", np.full((3, 4), 3e38)), "-o", out)
    assert_refused(r, "tensor 'y'", "NaN or ±Inf", "overflow float32", absent=[out])


def test_zero_dimension_is_not_called_dynamic(tmp_path):
    out = tmp_path / "o.sfn"
    r = invoke("compile", _gemm_model(tmp_path / "z.onnx", np.ones((3, 4)), ("N", 0)), "-o", out)
    line = assert_refused(r, "dimension 1 has size 0", absent=[out])
    assert "dynamic" not in line


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_external_data_that_is_not_a_file_says_what_it_is(tmp_path, kind):
    from onnx.external_data_helper import convert_model_to_external_data
    model = onnx.load(_gemm_model(tmp_path / "tmp.onnx", np.ones((3, 4))))
    convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "w.bin").unlink()
    os.mkfifo(tmp_path / "w.bin") if kind == "fifo" else (tmp_path / "w.bin").mkdir()
    out = tmp_path / "o.sfn"
    line = assert_refused(invoke("compile", tmp_path / "m.onnx", "-o", out), "'w.bin' is a ",
                          absent=[out])
    assert ("FIFO" if kind == "fifo" else "folder") in line and "missing" not in line


def test_extreme_inputs_run_without_warnings(files, tmp_path):
    x = np.load(files / "x.npy")
    x[:4] = 3e38
    x[4:8] = -3e38
    np.save(tmp_path / "x.npy", x)
    r = cli("run", files / "m.sfn", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    art = artifact.load(files / "m.sfn")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sim.cpu.run(art, x)
        sim.reference.run(art, x)


def test_input_clipping_is_counted_reported_and_can_fail_the_run(files, tmp_path):
    x = np.load(files / "x.npy")
    x[:3] *= 50.0
    x[3] = -1e30
    np.save(tmp_path / "x.npy", x)
    art = artifact.load(files / "m.sfn")
    inp = art.node(art.input)
    n = np.floor(x.astype(np.float32) * np.float32(inp.inv_scale) + np.float32(0.5))
    expected = int(np.count_nonzero((n < inp.lo) | (n > inp.hi)))
    assert expected > 0
    assert sim.cpu.run(art, x).stats[art.input].clipped == expected
    assert sim.reference.run(art, x).stats[art.input].clipped == expected
    r = invoke("run", files / "m.sfn", "--input", tmp_path / "x.npy", "--output",
               tmp_path / "y.npy", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["input_clipped"] == expected
    r = invoke("report", files / "m.sfn", "--input", tmp_path / "x.npy", "--out",
               tmp_path / "rep", "--json")
    rep = json.loads(r.stdout)["report"]
    assert rep["totals"]["input_clipped"] == expected
    assert any(f"clipped {expected} values" in note for note in rep["notes"])
    out = tmp_path / "z.npy"
    assert_refused(invoke("run", files / "m.sfn", "--input", tmp_path / "x.npy", "--output", out,
                          "--fail-on-saturation"),
                   f"input '{art.input}' clipped {expected} values", absent=[out])


@pytest.mark.lava
def test_lava_counts_the_same_input_clipping(files, tmp_path):
    import sim.lava
    art = artifact.load(files / "m.sfn")
    x = np.load(files / "x.npy")[:13]
    x[:3] *= 50.0
    for steps in (1, 2):
        cpu = sim.cpu.run(art, x, timesteps=steps)
        assert cpu.stats[art.input].clipped > 0
        from compare import assert_same
        assert_same(sim.lava.run(art, x, timesteps=steps, lanes=4, timeout=120), cpu)


@pytest.mark.lava
def test_a_failing_lava_process_prints_one_line_and_its_traceback_only_with_debug(
        files, tmp_path, monkeypatch):
    from sim.lava.procs import models
    run_spk = models.PySFNNeuronLayerFixed.run_spk

    def failing(self):
        if self.time_step == 3:
            raise ValueError("injected failure at step 3")
        run_spk(self)
    monkeypatch.setattr(models.PySFNNeuronLayerFixed, "run_spk", failing)
    out = tmp_path / "y.npy"
    args = run_args(files, out, "--backend", "lava", "--timeout", "60")
    r = invoke(*args)
    assert_refused(r, "injected failure at step 3", absent=[out])
    assert r.stdout == ""
    r = invoke("--debug", *args)
    assert r.returncode == 2 and r.stdout == ""
    assert "Traceback" in r.stderr and "injected failure at step 3" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("error: ")


# --- 8. --debug, file modes, float64 inputs -----------------------------------------------------------
def test_debug_hint_only_without_debug(files, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(sim.cpu, "run", broken)
    r = invoke(*run_args(files, tmp_path / "y.npy"))
    assert r.returncode == 3 and r.stderr.splitlines() == \
        ["internal error: RuntimeError: a bug (re-run with --debug for the traceback)"]
    r = invoke("--debug", *run_args(files, tmp_path / "y.npy"))
    assert r.returncode == 3 and "--debug" not in r.stderr and "Traceback" in r.stderr
    assert r.stderr.splitlines()[-1] == "internal error: RuntimeError: a bug"


@pytest.mark.slow      # ~15 s: every command once
def test_every_command_writes_files_with_the_umask_mode(files, tmp_path):
    umask = 0o027      # not the usual 022: the mode follows the umask, not a constant
    mode = 0o666 & ~umask
    d = tmp_path
    for args in (("compile", files / "m.onnx", "-o", d / "m.sfn", "--emit-reference",
                  d / "ref.onnx", "--calib", files / "calib.npy"),
                 ("run", files / "m.sfn", "--input", files / "x.npy", "--output", d / "y.npy"),
                 ("report", files / "m.sfn", "--input", files / "x.npy", "--out", d / "rep"),
                 ("example", "digits", "--out", d / "ex")):
        r = cli(*args, umask=umask)
        assert r.returncode == 0, r.stderr
    written = [p for p in d.rglob("*") if p.is_file()]
    assert len(written) == 3 + 4 + 4
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(mode)}


def test_rnn_cell_export_gets_the_umask_mode(tmp_path):
    from exporters.rnn.export import export_rnn_onnx
    from exporters.rnn.model import EIRNN
    path = Path(export_rnn_onnx(EIRNN(3, 2, n_units=6, seed=0), tmp_path / "cell.onnx",
                                check=False))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_float64_inputs_are_cast_with_a_note_everywhere(files, tmp_path):
    x = np.load(files / "x.npy")
    np.save(tmp_path / "x64.npy", x.astype(np.float64))
    r = invoke("run", files / "m.sfn", "--input", tmp_path / "x64.npy", "--output",
               tmp_path / "y64.npy")
    assert r.returncode == 0 and "x64.npy is float64: cast to float32" in r.stdout
    assert invoke(*run_args(files, tmp_path / "y32.npy")).returncode == 0
    assert np.load(tmp_path / "y64.npy").tobytes() == np.load(tmp_path / "y32.npy").tobytes()
    art = artifact.load(files / "m.sfn")
    assert sim.cpu.run(art, x.astype(np.float64)).output.tobytes() == \
        sim.cpu.run(art, x).output.tobytes()
    import toolchain
    calib = np.load(files / "calib.npy")
    a64 = toolchain.compile(files / "m.onnx", calib=calib.astype(np.float64))
    a32 = toolchain.compile(files / "m.onnx", calib=calib)
    assert artifact.to_bytes(a64) == artifact.to_bytes(a32)


# --- 2. a Lava run ended by a signal ---------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _segments(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"sfn_{pid}_")]


@pytest.fixture(scope="module")
def long_lava_run(tmp_path_factory):
    """A small artifact and enough samples for a one-lane Lava run of well over a minute."""
    from test_lava import _small_artifact
    d = tmp_path_factory.mktemp("kill")
    artifact.save(_small_artifact(), d / "s.sfn")
    np.save(d / "x.npy", np.random.default_rng(0).uniform(-1, 1, (200_000, 4)).astype(np.float32))
    return d


@pytest.mark.lava
@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "SIGKILL", "SIGINT to the group"])
def test_a_killed_lava_run_leaves_no_process_and_no_segment(long_lava_run, how):
    d = long_lava_run
    with open(d / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "toolchain.cli", "run", str(d / "s.sfn"),
                                 "--input", str(d / "x.npy"), "--output", str(d / "y.npy"),
                                 "--backend", "lava", "--lanes", "1"], cwd=ROOT, stderr=err,
                                stdout=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + BOUND_S
        while not (_segments(proc.pid) and len(_descendants(proc.pid)) >= 4):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.1)
        time.sleep(1.0)
        procs, segments = _descendants(proc.pid), _segments(proc.pid)
        if how == "SIGINT to the group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, getattr(signal, how))
        code = proc.wait(BOUND_S)
        gone = time.monotonic() + 5.0
        while time.monotonic() < gone and (any(map(_running, procs)) or
                                           any(os.path.exists(f"/dev/shm/{s}") for s in segments)):
            time.sleep(0.05)
        assert [p for p in procs if _running(p)] == []
        assert [s for s in segments if os.path.exists(f"/dev/shm/{s}")] == []
        assert _segments(proc.pid) == []
        stderr = (d / "stderr.txt").read_text()
        assert "Traceback" not in stderr and "Process SystemProcess" not in stderr, stderr
        expected = {"SIGINT to the group": 1}.get(how, -getattr(signal, how, signal.SIGINT))
        assert code == expected, (code, stderr)
        assert not (d / "y.npy").exists() and temp_files(d) == []
    finally:
        for pid in [proc.pid] + _descendants(proc.pid):
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.lava
def test_a_run_removes_the_segments_of_dead_runs_only(tmp_path):
    from multiprocessing.shared_memory import SharedMemory
    import sim.lava
    from test_lava import _small_artifact, _small_inputs
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = SharedMemory(name=f"sfn_{gone.pid}_abcdef012345_0", create=True, size=64)
    live = SharedMemory(name=f"sfn_{os.getppid()}_abcdef012345_0", create=True, size=64)
    from multiprocessing import resource_tracker
    for shm in (dead, live):
        resource_tracker.unregister(shm._name, "shared_memory")
    try:
        sim.lava.run(_small_artifact(), _small_inputs(8), timeout=120)
        assert not os.path.exists(f"/dev/shm/{dead.name}")
        assert os.path.exists(f"/dev/shm/{live.name}")
    finally:
        for shm in (dead, live):
            shm.close()
            try:
                shm.unlink()
            except FileNotFoundError:
                pass
