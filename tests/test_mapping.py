"""Core mapping: limits no split can fix raise a named, quantified error; placements respect every
limit (re-counted here independently of the mapper); cores used stay within 1.3× the lower bound
on the digits CNN and a full-width ResNet-18-shaped network."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sim import ir
from sim.artifact import Artifact, load, save
from toolchain.errors import ToolchainError
from toolchain.mapping import MappingError, Placement, map_artifact, placement_table
from toolchain.target import TargetError, list_targets, load_target

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from mapping import digits_artifact, resnet18_artifact, weight_count  # noqa: E402

LOIHI2 = load_target("loihi2")


# ------------------------------------------------------------ small networks built from records

def _input(shape, hi=15):
    return ir.Input("input", (), shape, inv_scale=1.0, lo=0, hi=hi)


def _neuron(name, src, shape, hi=15, lo=0):
    chan = (shape[0],) + (1,) * (len(shape) - 1)
    return ir.Neuron(name, (src,), shape, threshold=np.full(chan, 64),
                     bias=np.zeros(chan, np.int64), lo=lo, hi=hi)


def _readout(src, n):
    return ir.Readout(f"{src}/readout", (src,), (n,), scale=np.ones(n, np.float32),
                      bias=np.zeros(n, np.int64))


def _art(nodes):
    art = Artifact(nodes, nodes[0].name, nodes[-1].name, {})
    art.validate()
    return art


def _dense_net(f_in, f_out, weight=None, hi=15):
    rng = np.random.default_rng(0)
    w = weight if weight is not None else \
        (rng.integers(-127, 128, (f_out, f_in)) * 2).astype(np.int16)
    return _art([_input((f_in,)), ir.Dense("fc", ("input",), (f_out,), weight=w),
                 _neuron("relu", "fc", (f_out,), hi=hi),
                 ir.Dense("out", ("relu",), (3,), weight=np.ones((3, f_out), np.int16)),
                 _readout("out", 3)])


def _target_file(tmp_path, **changes) -> Path:
    """A copy of loihi2.json with some limits changed."""
    data = json.loads((ROOT / "toolchain" / "targets" / "loihi2.json").read_text())
    for key, value in changes.items():
        section = next(s for s in ("limits", "synapse_encoding") if key in data[s])
        data[section][key]["value"] = value
    data["name"] = "test-target"
    path = tmp_path / "test-target.json"
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------ an independent re-count

_WORDS: dict[int, list[int]] = {}


def _words(n: int, bits: int) -> int:
    """Fewest 64-bit words for a list of n synapses in groups of ≤ 64 with a 10-bit header."""
    table = _WORDS.setdefault(bits, [0])
    while len(table) <= n:
        m = len(table)
        table.append(min(table[m - p] + -(-(p * bits + 10) // 64)
                         for p in range(1, min(m, 64) + 1)))
    return table[n]


def _incoming(art, node):
    """(synapse node or None, source) pairs that drive compartment node `node` (networks here
    use conv, dense, sum-pool, add and reshape only, so element indices pass through)."""
    start = node if node.kind not in ("neuron", "readout") else art.node(node.inputs[0])

    def walk(n, top):
        if n.kind in ("conv", "dense", "sumpool") and (top or n is not node):
            return [(n, n.inputs[0])]
        if n.kind == "add":
            return [c for i in n.inputs for c in walk(art.node(i), False)]
        if n.kind == "reshape":
            return walk(art.node(n.inputs[0]), False)
        return [(None, n.name)]

    return walk(start, start is node)


def _recount_memory(art, placement, layer, elements):
    """Synaptic memory of `elements` of `layer` on one core, from the documented rules."""
    node = art.node(layer)
    per_channel = int(np.prod(node.shape[1:])) if len(node.shape) > 1 else 1
    channels = len(np.unique(elements // per_channel))
    bits = 0
    for syn, _ in _incoming(art, node):
        if syn is None:                                    # one-to-one, shared per channel
            bits += channels * _words(1, 8) * 64
        elif syn.kind == "conv":                           # one kernel slice per channel
            c_out, c_in_g, kh, kw = syn.weight.shape
            bits += channels * _words(c_in_g * kh * kw, 8) * 64
        elif syn.kind == "sumpool":
            bits += channels * _words(syn.kernel[0] * syn.kernel[1], 8) * 64
        else:                                              # dense: the layer's recorded format
            nz = syn.weight[elements] != 0
            cols = nz.sum(axis=0)
            if placement.layers[layer]["connections"][syn.name] == "dense":
                bits += int((cols > 0).sum()) * _words(len(elements), 8) * 64
            else:
                bits += sum(_words(int(c), 8 + 13) for c in cols if c) * 64
    return bits


def _check_placement(art, placement, target):
    n_core = target["neurons_per_core"]
    m_core = target["synaptic_memory_bits_per_core"]
    placed = {name: np.zeros(layer["neurons"], int) for name, layer in placement.layers.items()}
    for core in placement.cores:
        elements = {}
        for name, start, stop in core["blocks"]:
            placed[name][start:stop] += 1
            elements.setdefault(name, []).append(np.arange(start, stop))
        neurons = sum(stop - start for _, start, stop in core["blocks"])
        memory = 0
        for name, parts in elements.items():
            m = _recount_memory(art, placement, name, np.concatenate(parts))
            assert m == core["layers"][name]["memory_bits"], (name, m)
            memory += m
        assert neurons == core["neurons"] <= n_core
        assert memory == core["memory_bits"] <= m_core
    for name, counts in placed.items():
        assert (counts == 1).all(), f"{name}: every compartment is placed exactly once"
    compartment_kinds = {"neuron", "maxpool", "readout"}
    expected = {n.name for n in art.nodes if n.kind in compartment_kinds}
    assert expected <= set(placement.layers)
    total = sum(int(np.prod(art.node(n).shape)) for n in placement.layers)
    assert placement.lower_bound["neurons"] == total
    unsplit = sum(_recount_memory(art, placement, n, np.arange(layer["neurons"]))
                  for n, layer in placement.layers.items())
    assert placement.lower_bound["memory_bits"] == unsplit
    assert placement.lower_bound["cores"] == int(np.ceil(max(total / n_core, unsplit / m_core)))
    per_chip = {}
    for core in placement.cores:
        per_chip[core["chip"]] = per_chip.get(core["chip"], 0) + 1
    assert max(per_chip.values()) <= target["cores_per_chip"]
    assert placement.chips == len(per_chip)


# ------------------------------------------------------------ targets

def test_bundled_target_has_every_constant_with_a_source():
    assert "loihi2" in list_targets()
    t = LOIHI2
    assert (t["cores_per_chip"], t["neurons_per_core"], t["payload_bits"]) == (128, 8192, 24)
    assert t["synaptic_memory_bits_per_core"] == 128 * 1024 * 8
    assert t["input_axons_per_core"] is None                       # unknown: not enforced
    for section in ("limits", "synapse_encoding", "energy"):
        for key, q in t.constants(section).items():
            assert q.source and q.certainty, f"{section}.{key} names its source"


def test_bad_target_files_are_named(tmp_path):
    with pytest.raises(TargetError, match="unknown target 'loihi9'.*loihi2"):
        load_target("loihi9")
    bad = _target_file(tmp_path, neurons_per_core=0)
    with pytest.raises(TargetError, match="neurons_per_core must be a positive integer"):
        load_target(bad)


# ------------------------------------------------------------ limits no split can fix

def test_payload_wider_than_the_target_is_named_and_quantified(tmp_path):
    art = _dense_net(8, 4, hi=2 ** 16)                 # levels [0, 2^16]: 17 bits
    with pytest.raises(MappingError) as err:
        map_artifact(art, load_target(_target_file(tmp_path, payload_bits=16)))
    msg = str(err.value)
    assert "'relu'" in msg and "17 bits" in msg and "carries 16" in msg and "over by 1 bits" in msg
    assert "--levels" in msg


def test_weight_wider_than_the_mantissa_is_named_and_quantified():
    w = np.full((4, 8), 2, np.int16)
    w[1, 2] = 600
    with pytest.raises(MappingError, match=r"'fc'.*600 needs a 10-bit mantissa.*allows 8 bits.*"
                                           r"over by 2 bits"):
        map_artifact(_dense_net(8, 4, weight=w), LOIHI2)


def test_one_neurons_fan_in_over_the_core_memory_is_named_and_quantified(tmp_path):
    # 20,000 input axons with a nonzero weight, one 64-bit word each, for a single neuron; a
    # target that does not allow partial sums
    target = load_target(_target_file(tmp_path, partial_sum_relays=False))
    art = _dense_net(20_000, 2, weight=np.full((2, 20_000), 2, np.int16))
    with pytest.raises(MappingError) as err:
        map_artifact(art, target)
    need, have = 20_000 * 64, 1_048_576
    msg = str(err.value)
    assert "layer 'relu'" in msg and f"{need:,} bits" in msg and f"{have:,}" in msg
    assert f"over by {need - have:,} bits" in msg and "fan-in" in msg
    assert "test-target does not allow splitting a neuron's fan-in into partial sums" in msg
    assert isinstance(err.value, ToolchainError)


def test_fan_in_of_three_cores_is_split_into_partial_sums():
    """One neuron of a dense layer needs ~3 cores of synapses (48,000 inputs, a 64-bit word
    each): its fan-in is cut into chunks of consecutive inputs, one kept by the neuron, the
    others summed by relay populations that feed it one-to-one; every part fits, each part's
    memory re-counted here from the documented rules."""
    f_in, f_out = 48_000, 8
    rng = np.random.default_rng(3)
    w = (rng.integers(1, 120, (f_out, f_in)) * 2).astype(np.int16)
    art = _dense_net(f_in, f_out, weight=w)
    placement = map_artifact(art, LOIHI2)
    m_core = LOIHI2["synaptic_memory_bits_per_core"]
    assert 2.5 * m_core < f_in * 64 < 3.5 * m_core        # one neuron: ~3 cores of synapses
    neuron = placement.layers["relu"]
    relays = neuron["partial_sums"]
    k = len(relays) + 1
    assert k >= 3                                           # every part fits a core
    parts = [neuron] + [placement.layers[r] for r in relays]
    spans = sorted(tuple(p["columns"]) for p in parts)
    assert spans[0][0] == 0 and spans[-1][1] == f_in
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))    # a partition of the inputs
    for r in relays:
        layer = placement.layers[r]
        assert layer["role"] == "relay" and layer["partial_of"] == "relu"
        assert layer["neurons"] == f_out and layer["sources"] == ["input"]
        assert r in neuron["sources"]
    assert any(f"split into {k} partial sums" in n for n in placement.notes)
    for core in placement.cores:
        assert core["memory_bits"] <= m_core
        for name, start, stop in core["blocks"]:
            layer = placement.layers[name]
            if "columns" not in layer:
                continue
            rows = np.arange(start, stop)
            a, b = layer["columns"]
            cols = (w[rows][:, a:b] != 0).sum(axis=0)
            fmt = layer["connections"]["fc"]
            bits = (int((cols > 0).sum()) * _words(len(rows), 8) * 64 if fmt == "dense"
                    else sum(_words(int(c), 21) for c in cols if c) * 64)
            if name == "relu":      # one one-to-one synapse per relay and neuron
                bits += len(relays) * len(rows) * _words(1, 21) * 64
            assert core["layers"][name]["memory_bits"] == bits, name
    # the compartments of the relays are counted: neurons, the lower bound, the cores
    assert placement.lower_bound["neurons"] == f_out * k + 3
    assert sum(c["neurons"] for c in placement.cores) == f_out * k + 3


def test_window_fan_in_is_not_split_and_the_error_says_why(tmp_path):
    target = load_target(_target_file(tmp_path, synaptic_memory_bits_per_core=4096))
    w = np.full((2, 64, 3, 3), 2, np.int16)
    art = _art([_input((64, 4, 4)), ir.Conv("conv", ("input",), (2, 4, 4), weight=w,
                                            pads=(1, 1, 1, 1)),
                _neuron("relu", "conv", (2, 4, 4)), ir.Reshape("flat", ("relu",), (32,)),
                ir.Dense("out", ("flat",), (3,), weight=np.ones((3, 32), np.int16)),
                _readout("out", 3)])
    with pytest.raises(MappingError, match=r"layer 'relu' .*the fan-in is not split: only a "
                                           r"dense fan-in \(a weight matrix\) is split into "
                                           r"partial sums; this one comes through window"):
        map_artifact(art, target)


def test_one_neurons_fan_in_over_the_axon_limit_is_named_and_quantified(tmp_path):
    target = load_target(_target_file(tmp_path, input_axons_per_core=4096))
    rng = np.random.default_rng(1)
    w = (rng.integers(-127, 128, (8, 512, 3, 3)) * 2).astype(np.int16)
    art = _art([_input((512, 4, 4)),
                ir.Conv("conv", ("input",), (8, 4, 4), weight=w, pads=(1, 1, 1, 1)),
                _neuron("relu", "conv", (8, 4, 4)),
                ir.Reshape("flat", ("relu",), (128,)),
                ir.Dense("out", ("flat",), (3,), weight=np.ones((3, 128), np.int16)),
                _readout("out", 3)])
    with pytest.raises(MappingError, match=r"layer 'relu' .*reads 4,608 input axons .*accepts "
                                           r"4,096 \(over by 512\)"):
        map_artifact(art, target)
    # without the limit (Loihi 2: unpublished) the same network maps, axons counted
    placement = map_artifact(art, LOIHI2)
    assert placement.cores[0]["layers"]["relu"]["input_axons"] == 512 * 16


# ------------------------------------------------------------ placements that fit

def test_placement_respects_every_limit_recounted_independently(tmp_path):
    small = load_target(_target_file(tmp_path, neurons_per_core=2048, cores_per_chip=16,
                                     synaptic_memory_bits_per_core=2 ** 18))
    narrow = resnet18_artifact(classes=10, width=16, size=16)
    for art, target in ((digits_artifact(), small), (narrow, small),
                        (resnet18_artifact(), LOIHI2)):
        placement = map_artifact(art, target)
        _check_placement(art, placement, target)
        assert placement.cores_used > 1
    assert placement.chips == 1
    small_resnet = map_artifact(narrow, small)
    assert small_resnet.chips == -(-small_resnet.cores_used // 16) >= 2


def test_mapping_quality_within_1_3x_of_the_lower_bound(capsys):
    rows = []
    for name, art in (("digits CNN", digits_artifact()), ("ResNet-18 shape", resnet18_artifact())):
        placement = map_artifact(art, LOIHI2)
        lb = placement.lower_bound
        rows.append((name, weight_count(art), placement.cores_used, lb["cores"], placement.ratio))
        assert placement.cores_used <= 1.3 * lb["cores"], (name, placement.cores_used, lb)
    with capsys.disabled():
        print()
        for name, weights, cores, bound, ratio in rows:
            print(f"  {name}: {weights:,} weights, {cores} cores, lower bound {bound}, "
                  f"{ratio:.3f}×")
    assert 11_600_000 < rows[1][1] < 11_800_000          # full-width ResNet-18: 11.7 M weights
    assert rows[1][3] >= 68                             # ≥ 557,056 neurons / 8,192 per core


def test_what_counts_as_a_compartment():
    """Neurons, max-pool outputs, readout accumulators and relays for sums that feed another
    weighted map; the input encoder is on the host; synapse and index nodes add none."""
    rng = np.random.default_rng(2)
    w1 = (rng.integers(-127, 128, (4, 2, 3, 3)) * 2).astype(np.int16)
    w2 = (rng.integers(-127, 128, (6, 4, 3, 3)) * 2).astype(np.int16)
    art = _art([_input((2, 8, 8)),
                ir.Conv("conv1", ("input",), (4, 8, 8), weight=w1, pads=(1, 1, 1, 1)),
                _neuron("relu1", "conv1", (4, 8, 8)),
                ir.SumPool("pool", ("relu1",), (4, 4, 4)),
                ir.Conv("conv2", ("pool",), (6, 4, 4), weight=w2, pads=(1, 1, 1, 1)),
                ir.MaxPool("max", ("conv2",), (6, 2, 2)),
                _neuron("relu2", "max", (6, 2, 2)),
                ir.Transpose("t", ("relu2",), (2, 2, 6), perm=(1, 2, 0)),
                ir.Reshape("flat", ("t",), (24,)),
                ir.Dense("out", ("flat",), (5,), weight=np.ones((5, 24), np.int16)),
                _readout("out", 5)])
    placement = map_artifact(art, LOIHI2)
    roles = {name: layer["role"] for name, layer in placement.layers.items()}
    assert roles == {"relu1": "neuron", "pool": "relay", "conv2": "relay", "max": "maxpool",
                     "relu2": "neuron", "out/readout": "readout"}
    assert placement.lower_bound["neurons"] == 256 + 64 + 96 + 24 + 24 + 5
    assert placement.layers["relu2"]["sources"] == ["max"]
    assert placement.layers["out/readout"]["sources"] == ["relu2"]
    # the transpose re-indexes the dense layer's inputs: every output still reads all 24
    assert placement.layers["out/readout"]["synapses"] == 5 * 24


def test_concat_branches_land_on_their_channels():
    import nets
    art = nets.compiled("concat")[0].artifact
    placement = map_artifact(art, LOIHI2)
    # the branches fire in one common unit, so the concat is wiring into the next conv
    conv = art.node("/out/out.0/Conv_output_0")
    layer = placement.layers["/out/out.1/Relu_output_0"]
    assert layer["sources"] == ["/a/a.1/Relu_output_0", "/b/b.1/Clip_output_0",
                                "/c/c.2/Relu_output_0"]
    # the conv reads all 4 + 3 + 6 concatenated channels; its kernel is stored once
    assert conv.weight.shape[1] == 13
    assert layer["synapses"] == conv.weight.size == 936


def test_recurrent_delay_edges_are_connections():
    rng = np.random.default_rng(3)
    w_rec = (rng.integers(-127, 128, (16, 16)) * 2).astype(np.int16)
    art = _art([_input((4,)),
                ir.Dense("z_inp", ("input",), (16,), weight=np.ones((16, 4), np.int16)),
                ir.Delay("y_prev", (), (16,), source="y"),
                ir.Dense("z_rec", ("y_prev",), (16,), weight=w_rec),
                ir.Add("z", ("z_inp", "z_rec"), (16,), gains=np.ones((2, 16), np.int64),
                       exps=(0, 0)),
                _neuron("y", "z", (16,)),
                ir.Dense("o", ("y",), (2,), weight=np.ones((2, 16), np.int16)),
                _readout("o", 2)])
    placement = map_artifact(art, LOIHI2)
    assert placement.layers["y"]["sources"] == ["input", "y"]
    assert set(placement.layers["y"]["connections"]) == {"z_inp", "z_rec"}


def test_placement_round_trips_through_json_and_the_artifact(tmp_path):
    art = digits_artifact()
    placement = map_artifact(art, LOIHI2)
    data = json.loads(json.dumps(placement.to_json()))
    again = Placement.from_json(data)
    assert again.to_json() == placement.to_json()
    stored = Artifact(art.nodes, art.input, art.output, {**art.meta, "placement": data},
                      art.record)
    save(stored, tmp_path / "placed.sfn")
    assert load(tmp_path / "placed.sfn").meta["placement"] == data
    with pytest.raises(MappingError, match="version"):
        Placement.from_json({**data, "version": 99})


def test_placement_table_shows_cores_and_bound():
    from rich.console import Console
    placement = map_artifact(resnet18_artifact(), LOIHI2)
    console = Console(width=200, record=True)
    console.print(placement_table(placement))
    text = console.export_text()
    assert f"{placement.cores_used} cores" in text
    assert f"lower bound {placement.lower_bound['cores']}" in text
    assert "layer4.1/relu2" in text and "shared" in text
