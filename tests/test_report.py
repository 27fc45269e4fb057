"""`toolchain report` and `toolchain targets`: the figures are valid PNGs, and every number in the
table equals one recomputed here from an independent sim.cpu run and the documented rules."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import sim.cpu
from exporters.digits import load_digits_split
from sim import semantics
from sim.artifact import save
from toolchain.cli.report import report
from toolchain.cli.targets import targets
from toolchain.energy import tap_payloads
from toolchain.errors import ShapeError
from toolchain.mapping import map_artifact
from toolchain.target import TargetError, load_target

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from mapping import digits_artifact  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
E = {k: q.value for k, q in load_target("loihi2").constants("energy").items()}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits CNN artifact, its test inputs, and `toolchain report --json` on them."""
    folder = tmp_path_factory.mktemp("report")
    art = digits_artifact()
    x = load_digits_split()[2].astype(np.float32)
    save(art, folder / "digits.sfn")
    np.save(folder / "x.npy", x)
    out = folder / "out"
    result = CliRunner().invoke(report, [str(folder / "digits.sfn"), "--input",
                                         str(folder / "x.npy"), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return art, x, folder, json.loads(result.output)


def _expected(art, x):
    """Per-layer numbers per inference from an independent sim.cpu run and the counting rules."""
    ref = sim.cpu.run(art, x)
    n = len(x)
    placement = map_artifact(art, load_target("loihi2"))
    assert placement.cores_used == 1      # so every spike reaches exactly one core
    rows = {}
    for node in art.nodes:
        st = ref.stats[node.name]
        compartments = int(np.prod(node.shape)) if node.name in placement.layers else 0
        row = {"synops": st.synops / n, "saturations": st.saturations,
               "compartments": compartments, "macs": 0}
        if node.kind == "conv":
            c_out, c_in, kh, kw = node.weight.shape
            row["macs"] = int(np.prod(node.shape)) * c_in * kh * kw
        elif node.kind == "dense":
            row["macs"] = node.weight.shape[0] * node.weight.shape[1]
        if node.kind == "neuron":
            row["spikes"] = st.spikes / n
            row["mean_payload"] = st.payload / st.spikes
        if node.kind == "input":
            encoded = semantics.encode_input(x, node.inv_scale, node.lo, node.hi)
            row["spikes"] = np.count_nonzero(encoded) / n
            row["mean_payload"] = np.abs(encoded).sum() / np.count_nonzero(encoded)
        rows[node.name] = row
    return rows


def test_report_writes_valid_png_figures(digits):
    import matplotlib.image
    _, _, folder, doc = digits
    names = sorted(Path(f).name for f in doc["figures"])
    assert names == ["activity.png", "cores.png", "energy.png"]
    for f in doc["figures"]:
        data = Path(f).read_bytes()
        assert data[:8] == PNG_MAGIC
        image = matplotlib.image.imread(f)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    saved = json.loads((folder / "out" / "report.json").read_text())
    assert saved == doc


def test_report_numbers_equal_recomputed_ones(digits):
    art, x, _, doc = digits
    expected = _expected(art, x)
    got = {r["name"]: r for r in doc["report"]["layers"]}
    total = {"synops": 0.0, "neurons": 0.0, "spikes": 0.0}
    for name, want in expected.items():
        if name not in got:                       # index nodes have no row
            assert art.node(name).kind in ("reshape", "transpose", "concat", "delay")
            continue
        row = got[name]
        assert row["synops"] == want["synops"]
        assert row["saturations"] == want["saturations"] == 0
        assert row["compartments"] == want["compartments"]
        assert row["macs"] == want["macs"]
        if "spikes" in want:
            assert row["spikes"] == pytest.approx(want["spikes"], rel=1e-12)
            assert row["mean_payload"] == pytest.approx(want["mean_payload"], rel=1e-12)
        energy = {"synops": want["synops"] * E["synaptic_op_pj"],
                  "neurons": want["compartments"] * E["neuron_update_pj"],
                  "spikes": (row["spikes"] or 0) * (row["destinations"] or 0)
                  * E["spike_message_pj"]}
        for k in total:
            assert row["energy_pj"][k] == pytest.approx(energy[k], rel=1e-12)
            total[k] += energy[k]
    sources = [r for r in got.values() if r["role"] in ("input", "neuron", "relay", "maxpool")]
    assert all(r["destinations"] == 1 and r["spikes"] is not None for r in sources)
    tot = doc["report"]["totals"]
    macs = sum(w["macs"] for w in expected.values())
    assert tot["macs"] == macs == 451_904
    assert tot["synops"] == pytest.approx(sum(w["synops"] for w in expected.values()), rel=1e-12)
    assert tot["energy_pj"]["total"] == pytest.approx(sum(total.values()), rel=1e-12)
    assert tot["ann_fp32_pj"] == pytest.approx(macs * 4.6)
    assert tot["ann_int8_pj"] == pytest.approx(macs * 0.23)
    assert tot["snn_ac_fp32_pj"] == pytest.approx(tot["synops"] * 0.9)
    assert doc["report"]["placement"] == {"cores_used": 1, "chips": 1, "lower_bound": 1,
                                          "ratio": 1.0}


def test_payload_histograms_agree_with_the_spike_statistics(digits):
    art, x, _, doc = digits
    ref = sim.cpu.run(art, x)
    for row in doc["report"]["layers"]:
        hist = row["payload_hist"]
        if row["role"] not in ("input", "neuron", "relay", "maxpool"):
            assert hist is None
            continue
        assert sum(hist.values()) == len(x) * row["elements"]       # every element, every step
        nonzero = {int(v): c for v, c in hist.items() if int(v) != 0}
        assert sum(nonzero.values()) == pytest.approx(row["spikes"] * len(x))
        if row["kind"] == "neuron":
            assert sum(abs(v) * c for v, c in nonzero.items()) == ref.stats[row["name"]].payload


def test_the_terminal_table_prints_the_report_numbers(digits):
    art, x, folder, doc = digits
    result = CliRunner().invoke(report, [str(folder / "digits.sfn"), "--input",
                                         str(folder / "x.npy"), "--out", str(folder / "out2")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())          # the caption wraps at the console width
    tot = doc["report"]["totals"]
    assert f"{tot['synops']:,.1f}" in text
    assert f"{tot['macs']:,}" in text
    assert f"{tot['energy_pj']['total'] / 1000:,.3f} nJ/inference" in text
    assert f"fp32 {tot['ann_fp32_pj'] / 1000:,.3f} nJ" in text
    for row in doc["report"]["layers"]:
        if row["synops"]:
            assert f"{row['synops']:,.1f}" in text
    assert "synaptic_op_pj = 23.6" in text and "1 cores on 1 chip(s)" in text


def test_tap_payloads_reproduces_sim_cpu_bit_for_bit(digits):
    art, x, _, _ = digits
    names = [n.name for n in art.nodes if n.kind in ("input", "neuron")]
    result, hists = tap_payloads(art, x[:100], names, batch_size=37)
    ref = sim.cpu.run(art, x[:100])
    np.testing.assert_array_equal(result.output, ref.output)
    np.testing.assert_array_equal(result.accumulator, ref.accumulator)
    assert result.stats == ref.stats
    assert set(hists) == set(names)


def test_more_timesteps_report_no_histograms(digits):
    art, x, folder, _ = digits
    result = CliRunner().invoke(report, [str(folder / "digits.sfn"), "--input",
                                         str(folder / "x.npy"), "--out", str(folder / "out3"),
                                         "--timesteps", "2", "--json"])
    assert result.exit_code == 0, result.output
    rep = json.loads(result.output)["report"]
    assert rep["steps"] == 2
    ref = sim.cpu.run(art, x, timesteps=2)
    neuron = next(r for r in rep["layers"] if r["kind"] == "neuron")
    assert neuron["payload_hist"] is None
    assert neuron["spikes"] == ref.stats[neuron["name"]].spikes / len(x)
    assert neuron["spike_rate"] == neuron["spikes"] / (neuron["elements"] * 2)
    assert neuron["energy_pj"]["neurons"] == neuron["compartments"] * 2 * E["neuron_update_pj"]
    assert any("not measured" in note for note in rep["notes"])


def test_report_errors_say_what_and_where(digits, tmp_path):
    _, x, folder, _ = digits
    np.save(tmp_path / "x32.npy", x.astype(np.int32))
    result = CliRunner().invoke(report, [str(folder / "digits.sfn"), "--input",
                                         str(tmp_path / "x32.npy"), "--out", str(tmp_path)])
    assert isinstance(result.exception, ShapeError)
    assert "x32.npy: dtype int32; inputs must be float32" in str(result.exception)
    result = CliRunner().invoke(report, [str(folder / "digits.sfn"), "--input",
                                         str(folder / "x.npy"), "--target", "loihi9"])
    assert isinstance(result.exception, TargetError)
    assert "unknown target 'loihi9'" in str(result.exception)


def test_targets_lists_every_constant_with_its_source():
    result = CliRunner().invoke(targets, ["--json"])
    assert result.exit_code == 0, result.output
    (loihi2,) = [t for t in json.loads(result.output) if t["name"] == "loihi2"]
    assert loihi2["energy"]["synaptic_op_pj"]["value"] == 23.6
    assert "Davies" in loihi2["energy"]["synaptic_op_pj"]["source"]
    assert loihi2["limits"]["neurons_per_core"]["value"] == 8192
    text = CliRunner().invoke(targets, []).output
    assert "energy.synaptic_op_pj" in text and "limits.input_axons_per_core" in text


@pytest.mark.lava
def test_lava_backend_reports_the_same_activity(tmp_path):
    import nets
    compiled, _, test = nets.compiled("mlp")
    save(compiled.artifact, tmp_path / "mlp.sfn")
    np.save(tmp_path / "x.npy", test[:24].astype(np.float32))
    docs = {}
    for backend in ("cpu", "lava"):
        result = CliRunner().invoke(report, [str(tmp_path / "mlp.sfn"), "--input",
                                             str(tmp_path / "x.npy"), "--backend", backend,
                                             "--out", str(tmp_path / backend), "--json"])
        assert result.exit_code == 0, result.output
        docs[backend] = json.loads(result.output)["report"]
    assert docs["lava"]["backend"] == "lava"
    assert docs["lava"]["layers"] == docs["cpu"]["layers"]
    assert docs["lava"]["totals"] == docs["cpu"]["totals"]


def test_recurrent_networks_count_per_step():
    from sim import ir
    from sim.artifact import Artifact
    from toolchain.energy import build_report
    rng = np.random.default_rng(4)
    w_rec = (rng.integers(-127, 128, (16, 16)) * 2).astype(np.int16)
    chan = (16,)
    art = Artifact([ir.Input("input", (), (4,), inv_scale=8.0, lo=-15, hi=15),
                    ir.Dense("z_inp", ("input",), (16,), weight=np.full((16, 4), 20, np.int16)),
                    ir.Delay("y_prev", (), (16,), source="y"),
                    ir.Dense("z_rec", ("y_prev",), (16,), weight=w_rec),
                    ir.Add("z", ("z_inp", "z_rec"), (16,), gains=np.ones((2, 16), np.int64),
                           exps=(0, 0)),
                    ir.Neuron("y", ("z",), (16,), threshold=np.full(chan, 64),
                              bias=np.zeros(chan, np.int64), lo=0, hi=15),
                    ir.Dense("o", ("y",), (2,), weight=np.ones((2, 16), np.int16)),
                    ir.Readout("o/readout", ("o",), (2,), scale=np.ones(2, np.float32),
                               bias=np.zeros(2, np.int64))], "input", "o/readout", {})
    art.validate()
    x = rng.normal(size=(10, 7, 4)).astype(np.float32)
    placement = map_artifact(art, load_target("loihi2"))
    result, hists = tap_payloads(art, x, ["input", "y"])
    ref = sim.cpu.run(art, x)
    np.testing.assert_array_equal(result.accumulator, ref.accumulator)
    np.testing.assert_array_equal(result.output, ref.output)
    assert result.stats == ref.stats
    rep = build_report(art, result, placement, load_target("loihi2"), hists)
    assert rep.steps == 7
    y = next(r for r in rep.layers if r.name == "y")
    assert sum(hists["y"].values()) == 10 * 7 * 16
    assert y.spikes == ref.stats["y"].spikes / 10
    assert rep.totals["macs"] == (16 * 4 + 16 * 16 + 2 * 16) * 7
    assert y.energy_pj["neurons"] == 16 * 7 * E["neuron_update_pj"]


def test_products_are_counted_apart_and_their_energy_is_marked_unknown(tmp_path):
    """Attention scores q·qᵀ (a MatMul of two activations): its operations are product
    operations, not SynOps; its product neurons are its M·N·K terms; loihi2 gives no energy for
    a product neuron, so the report leaves it out with a note, and a target that gives one is
    used."""
    from test_product import _attention
    from toolchain.energy import build_report
    art = _attention(2, 5, 3, 2, 3)
    x = np.random.default_rng(1).normal(size=(12,) + art.node(art.input).shape).astype(np.float32)
    target = load_target("loihi2")
    placement = map_artifact(art, target)
    result = sim.cpu.run(art, x)
    rep = build_report(art, result, placement, target)
    s = next(r for r in rep.layers if r.name == "s")
    assert s.kind == "matmul" and s.synops == 0.0
    assert s.products == result.stats["s"].synops / 12 > 0
    assert s.product_neurons == 2 * 5 * 5 * 3
    products = {n.name for n in art.nodes if n.kind in ("product", "matmul")}
    assert len(products) >= 2
    assert rep.totals["products"] == pytest.approx(sum(result.stats[p].synops
                                                       for p in products) / 12)
    assert rep.totals["synops"] == pytest.approx(sum(
        st.synops for name, st in result.stats.items() if name not in products) / 12)
    assert rep.totals["energy_pj"]["products"] == 0.0
    assert any("product operations per inference: their energy is left out" in n
               for n in rep.notes)
    spec = json.loads((ROOT / "toolchain" / "targets" / "loihi2.json").read_text())
    spec["energy"]["product_op_pj"]["value"] = 10.0
    (tmp_path / "priced.json").write_text(json.dumps(spec))
    rep = build_report(art, result, placement, load_target(tmp_path / "priced.json"))
    assert rep.totals["energy_pj"]["products"] == pytest.approx(10.0 * rep.totals["products"])
    assert not any("product operations" in n for n in rep.notes)
