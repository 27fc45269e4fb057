"""The CLI as a person meets it: stage lines on stderr during compile, the scale search and a
Lava report (only with --progress or a terminal; stdout stays clean JSON); tables that fold
names instead of cutting numbers; --json documented on every command and numbers as numbers."""
from __future__ import annotations

import json
import re

import click
import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

import toolchain
from sim.artifact import load
from toolchain.cli import main
from toolchain.cli.common import layer_table
from toolchain.mapping import Placement, placement_table
from toolchain.quantize.tensor import LayerRow
from toolchain.tables import fitted, short


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("polish")
    paths = toolchain.examples.write_digits(folder)
    x = np.load(paths["x_test"])
    np.save(folder / "x40.npy", x[:40])
    np.save(folder / "calib200.npy", np.load(paths["calib"])[:200])
    return folder, paths


def _stages(stderr: str, command: str) -> list[str]:
    return [re.sub(r" \([0-9.]+ s\)$", "", line)[len(command) + 2:]
            for line in stderr.splitlines() if line.startswith(f"{command}: ")]


def test_compile_prints_its_stages_first_thing_and_json_stays_clean(files):
    folder, paths = files
    args = ["compile", str(paths["model"]), "--calib", str(folder / "calib200.npy"), "-o",
            str(folder / "d.sfn")]
    res = CliRunner().invoke(main, args + ["--progress", "--json"])
    assert res.exit_code == 0, res.output
    stages = _stages(res.stderr, "compile")
    assert stages[0] == f"load {paths['model']}"          # before the compiler's imports
    assert res.stderr.splitlines()[0].startswith("compile: load")
    assert stages[1:] == ["import", "calibrate", "quantize", "map", "agreement", "write"]
    assert json.loads(res.stdout)["artifact"] == str(folder / "d.sfn")
    quiet = CliRunner().invoke(main, args)                  # not a terminal: no stage lines
    assert quiet.exit_code == 0 and _stages(quiet.stderr, "compile") == []


def test_scale_search_reports_each_grid_point(files):
    folder, paths = files
    res = CliRunner().invoke(main, ["compile", str(paths["model"]), "--calib",
                                    str(folder / "calib200.npy"), "-o", str(folder / "s.sfn"),
                                    "--scale-search", "--progress"])
    assert res.exit_code == 0, res.output
    points = [s for s in _stages(res.stderr, "compile") if s.startswith("scale search")]
    n = len(points)
    assert n >= 5 and points[0].endswith(f"(1 of {n})") and points[-1].endswith(f"({n} of {n})")


@pytest.mark.lava
def test_lava_report_says_what_it_is_doing(files, tmp_path):
    folder, paths = files
    toolchain.compile(paths["model"], calib=np.load(folder / "calib200.npy")).save(
        tmp_path / "d.sfn")
    res = CliRunner().invoke(main, ["report", str(tmp_path / "d.sfn"), "--input",
                                    str(folder / "x40.npy"), "--backend", "lava", "--out",
                                    str(tmp_path / "rep"), "--progress"])
    assert res.exit_code == 0, res.output
    stages = _stages(res.stderr, "report")
    assert stages[0] == f"load {tmp_path / 'd.sfn'}"
    assert "Lava run of 40 samples (start-up takes seconds)" in stages
    assert stages.index("map onto cores") < stages.index("Lava run of 40 samples "
                                                         "(start-up takes seconds)")
    assert stages[-2:] == ["Lava: 40 of 40 samples", "figures"]


def _rows():
    art_rows = toolchain.compile(toolchain.examples.DIGITS_CNN,
                                 calib=toolchain.examples.load_digits_split()[0][:100]) \
        .meta["layers"]
    rows = [LayerRow(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()})
            for r in art_rows]
    rows[3].name = "encoder.blocks.3.attention.output_projection/Conv_output_0"
    rows[3].synapses = 34_832_621
    rows[6].synapses = 1_757_184
    return rows


@pytest.mark.parametrize("width", [100, 150])
def test_tables_fold_names_and_never_cut_numbers(width):
    rows = _rows()
    console = Console(width=width, record=True)
    console.print(fitted(layer_table(rows, "digits"), width))
    text = console.export_text()
    for r in rows:
        for number in (r.synapses, r.neurons):
            if number:
                assert f" {number:,} " in text or text.count(f"{number:,}\n"), number
    # the only ellipsis: the long name's own, at the start of its cell
    assert text.count("…") == 1 and f"│ {short(rows[3].name)[:8]}" in text
    assert short(rows[3].name).startswith("…") and short(rows[3].name).endswith("Conv_output_0")
    assert max(len(line) for line in text.splitlines()) <= width


def test_placement_table_keeps_its_numbers_when_narrow(files):
    folder, paths = files
    art = toolchain.compile(paths["model"], calib=np.load(folder / "calib200.npy"))
    placement = Placement.from_json(art.meta["placement"])
    console = Console(width=90, record=True)
    console.print(fitted(placement_table(placement), 90))
    text = console.export_text()
    for layer in placement.layers.values():
        assert f"{layer['neurons']:,}" in text
    assert max(len(line) for line in text.splitlines()) <= 90


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))
        else:
            yield prefix + (name,), command


def test_every_json_option_says_what_it_prints():
    found = 0
    for name, command in _commands(main):
        for param in command.params:
            if "--json" in getattr(param, "opts", ()):
                found += 1
                assert param.help and len(param.help) > 15, name
    assert found >= 8


def _strings_that_are_numbers(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings_that_are_numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings_that_are_numbers(v, f"{path}[{i}]")
    elif isinstance(value, str):
        try:
            float(value.replace(",", "").replace("%", ""))
            yield path, value
        except ValueError:
            pass


def test_json_outputs_hold_numbers_as_numbers(files, tmp_path):
    folder, paths = files
    runner = CliRunner()
    art = str(tmp_path / "d.sfn")
    outputs = [runner.invoke(main, ["compile", str(paths["model"]), "--calib",
                                    str(folder / "calib200.npy"), "-o", art, "--json"])]
    outputs.append(runner.invoke(main, ["run", art, "--input", str(folder / "x40.npy"),
                                        "--output", str(tmp_path / "y.npy"), "--labels",
                                        str(tmp_path / "labels.npy"), "--json"])
                   if np.save(tmp_path / "labels.npy", np.load(paths["y_test"])[:40]) is None
                   else None)
    outputs.append(runner.invoke(main, ["inspect", art, "--json"]))
    outputs.append(runner.invoke(main, ["report", art, "--input", str(folder / "x40.npy"),
                                        "--out", str(tmp_path / "rep"), "--json"]))
    outputs.append(runner.invoke(main, ["targets", "--json"]))
    for res in outputs:
        assert res.exit_code == 0, res.output
        document = json.loads(res.stdout)
        assert list(_strings_that_are_numbers(document)) == []
    layers = json.loads(outputs[0].stdout)["layers"]
    assert isinstance(layers[1]["weight_bits"], int) and isinstance(layers[0]["levels"][1], int)
    assert load(art).meta["layers"] == layers


def test_figures_say_what_their_energies_rest_on(files, tmp_path):
    """report's figures: energy in µJ with the stand-in note from the target's own certainty,
    one tick per core, the capacity lines in the legends."""
    from toolchain.energy import build_report, energy_note, render_figures, tap_payloads
    from toolchain.mapping import map_artifact
    from toolchain.target import load_target
    folder, paths = files
    art = toolchain.compile(paths["model"], calib=np.load(folder / "calib200.npy"))
    target = load_target("loihi2")
    placement = map_artifact(art, target)
    sources = [art.input] + [n for n, layer in placement.layers.items()
                             if layer["role"] != "readout"]
    result, payloads = tap_payloads(art, np.load(folder / "x40.npy"), sources)
    rep = build_report(art, result, placement, target, payloads, "cpu")
    note = energy_note(rep)
    assert note.startswith("neuron_update_pj, spike_message_pj, synaptic_op_pj: Loihi 1 "
                           "per-operation constants stand in for loihi2's")
    figures = render_figures(rep, placement)
    assert list(figures) == ["activity.png", "energy.png", "cores.png"]
    assert all(len(png) > 20_000 for png in figures.values())
