"""The shape of the code: one home per node kind, a one-way import graph, a README that is a
front door whose Python quick start runs, and product text without development history."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sim import ops
from sim.ops.base import Node

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("sim", "toolchain")


def _py_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _files_naming(word: str) -> list[str]:
    pattern = re.compile(rf"\b{re.escape(word)}\b")
    return [str(p.relative_to(ROOT)) for p in _py_files(*SOURCES) if pattern.search(p.read_text())]


@pytest.mark.parametrize("kind", ["maxpool", "sumpool", "concat"])
def test_a_kind_lives_in_at_most_four_files(kind):
    """Its op module, its ONNX converter, its quantizer rule and at most one backend file
    (sim.cpu's fast form); everything else reads traits."""
    files = _files_naming(kind)
    assert f"sim/ops/{kind}.py" in files
    assert len(files) <= 4, files


def test_every_kind_is_complete():
    """Each registered kind has a module of its own, a role, a docstring equation, a check, an
    integer evaluation, its SynOps rule, and (feed-forward kinds) a reference ONNX form."""
    assert set(ops.KINDS) >= {"input", "dense", "conv", "sumpool", "maxpool", "add", "neuron",
                              "delay", "concat", "reshape", "transpose", "readout"}
    for kind, cls in ops.KINDS.items():
        assert cls.__module__ == f"sim.ops.{kind}", kind
        assert cls.role in ("source", "synapse", "index", "neuron", "sink", "edge"), kind
        assert cls.__doc__ and len(cls.__doc__) > 40, kind
        assert cls._check is not Node._check or kind in ("input",), kind
        evaluates = cls.evaluate is not Node.evaluate or cls.apply is not Node.apply
        assert evaluates, kind
        if cls.role != "edge":
            assert cls.emit is not Node.emit, kind
        if cls.role in ("index", "edge"):
            assert hasattr(cls, "index_tables"), kind
        # how it counts synaptic operations, for backends that count outside `apply`
        assert cls.synops in ("", "outputs", "window", "inputs", "pairs", "inner"), kind


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("folder, forbidden", [("sim", "toolchain"), ("sim/lava", "sim.cpu"),
                                               ("toolchain", "exporters")])
def test_imports_go_one_way(folder, forbidden):
    bad = [(str(p.relative_to(ROOT)), m) for p in _py_files(folder) for m in _imports(p)
           if m == forbidden or m.startswith(forbidden + ".")]
    assert bad == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_inside_a_function_hides_a_cycle():
    """An import inside a function is for something heavy or optional (Lava, torch, onnx,
    matplotlib): never a module that imports the function's own module back at load time."""
    project = ("sim", "toolchain", "exporters")
    top: dict[str, set[str]] = {}      # module → project modules it imports at load time
    inner: list[tuple[str, str]] = []  # (module, project module imported inside a function)
    for path in _py_files(*project):
        name, tree = _module_name(path), ast.parse(path.read_text())
        in_functions = {id(n) for fn in ast.walk(tree)
                        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for n in ast.walk(fn)}
        top[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t.split(".")[0] in project:
                    (inner.append((name, t)) if id(node) in in_functions else top[name].add(t))

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            m = stack.pop()
            if m == goal:
                return True
            if m in seen:
                continue
            seen.add(m)
            stack.extend(top.get(m, ()))
        return False
    assert [(m, t) for m, t in inner if t in top and reaches(t, m)] == []


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12 * 1024
    for heading in ("## Quick start", "## Python", "## The CLI", "## Supported ONNX",
                    "## The integer contract"):
        assert heading in text, heading


def test_readme_python_quick_start_runs(tmp_path):
    """The README's Python block, executed as written in an empty folder."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 14
    script = tmp_path / "quickstart.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    accuracy = re.search(r"accuracy ([0-9.]+)", done.stdout)
    assert accuracy and float(accuracy.group(1)) > 0.98, done.stdout
    assert "bit-exact True" in done.stdout, done.stdout
    assert (tmp_path / "digits.sfn").stat().st_size > 0


HISTORY = re.compile(r"\.\./shared|notes/(lava|sfn|loihi2|ei-rnn)\.md|\bdesign\.md\b|"
                     r"this session|earlier session|before this change|the issue's", re.I)


def test_no_development_history_or_outside_references():
    """Product text describes the product: no references to files outside the repository, no
    session or issue history."""
    files = [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts
             and ".venv" not in p.parts and p.suffix in (".py", ".md", ".json", ".toml")
             or p.name == "Makefile"]
    hits = [str(p.relative_to(ROOT)) for p in files
            if p != Path(__file__) and HISTORY.search(p.read_text(errors="replace"))]
    assert hits == []


def test_kind_groups_come_from_traits():
    """The sign rule is one function of the traits: pooling and index maps keep the sign of
    their inputs, levels decide for sources and neurons, everything else may be negative."""
    from sim.ir import Concat, Dense, Input, MaxPool, Neuron, Reshape, SumPool
    nodes = [Input("x", (), (2, 4, 4)),
             SumPool("s", ("x",), (2, 2, 2)),
             MaxPool("m", ("s",), (2, 1, 1)),
             Neuron("n", ("m",), (2, 1, 1), threshold=np.ones((2, 1, 1)),
                    bias=np.zeros((2, 1, 1)), lo=-3, hi=3),
             Concat("c", ("m", "n"), (4, 1, 1)),
             Reshape("r", ("m",), (2,)),
             Dense("d", ("r",), (3,), weight=np.ones((3, 2), np.int16))]
    assert ops.nonnegative(nodes) == {"x", "s", "m", "r"}
