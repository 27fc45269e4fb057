"""E/I RNN: Dale's law under training, task definitions, R², short training, ONNX cell export."""
import numpy as np
import onnx
import pytest
import torch

from exporters.rnn import (EIRNN, cddm, custom_task, decision, evaluate, export_rnn_onnx,
                           go_nogo, make_task, masked_r2, memory_number, run_onnx_trials, train)

torch.set_num_threads(1)


def _assert_dale(m: EIRNN):
    W_rec, W_inp, W_out = (w.detach().numpy() for w in (m.W_rec, m.W_inp, m.W_out))
    assert np.all(np.diag(W_rec) == 0)
    assert np.all(W_rec[:, :m.n_exc] >= 0) and np.all(W_rec[:, m.n_exc:] <= 0)
    assert np.all(W_inp >= 0)
    assert np.all(W_out[:, m.n_exc:] == 0) and np.all(W_out >= 0)
    assert m.check_dale() == []


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_init_and_dale_after_training(activation):
    m = EIRNN(3, 1, n_units=32, activation=activation, rec_noise=0.05, input_noise=0.05)
    assert m.n_exc == 26 and m.unit_signs.tolist() == [1.0] * 26 + [-1.0] * 6
    radius = np.abs(np.linalg.eigvals(m.W_rec.detach().double().numpy())).max()
    assert radius == pytest.approx(1.2, rel=1e-5)
    _assert_dale(m)
    # a large learning rate pushes many weights across zero; the projection must catch all
    train(m, go_nogo(T=30), steps=15, lr=0.2, progress=False, val_every=5)
    _assert_dale(m)
    assert (m.W_rec == 0).sum() > 32  # the projection was active, not only the diagonal
    m.W_rec.data[0, 30] = 0.5  # I column made positive, and a self-weight
    m.W_rec.data[3, 3] = 0.1
    assert m.check_dale() == [3, 30]


def test_no_dale_keeps_mixed_signs():
    m = EIRNN(6, 2, n_units=32, dale=False)
    train(m, cddm(T=30, coherences=(-1.0, 1.0)), steps=3, progress=False)
    W = m.W_rec.detach().numpy()
    assert np.all(np.diag(W) == 0) and m.check_dale() == []
    assert ((W > 0).any(0) & (W < 0).any(0)).all()  # every column has both signs


def test_go_nogo_definition():
    t = go_nogo()
    assert t.inputs.shape == (11, 60, 3) and t.targets.shape == (11, 60, 1)
    i = 7  # v = 0.7
    assert t.conditions[i]["value"] == pytest.approx(0.7)
    assert np.allclose(t.inputs[i, :, 0], 0.7) and np.all(t.inputs[i, :, 2] == 1)
    assert np.all(t.inputs[i, :30, 1] == 0) and np.all(t.inputs[i, 30:, 1] == 1)
    assert np.all(t.targets[i, :30, 0] == 0) and np.all(t.targets[i, 30:, 0] == 1)
    assert np.all(t.targets[5] == 0) and np.all(t.targets[3] == 0)  # v = 0.5, 0.3: no-go
    expected = np.zeros(60, bool)
    expected[10:30] = expected[40:60] = True
    assert np.array_equal(t.mask[i], expected)
    short = go_nogo(T=30)  # every event time scales with T
    assert np.all(short.targets[7, 15:, 0] == 1) and np.all(short.targets[7, :15] == 0)
    assert short.mask[0].nonzero()[0].tolist() == list(range(5, 15)) + list(range(20, 30))


def test_cddm_definition():
    t = cddm()
    assert t.inputs.shape == (450, 300, 6) and t.targets.shape == (450, 300, 2)
    assert t.mask[0].sum() == 200 and t.mask[0, 99] and not t.mask[0, 100] and t.mask[0, 200]

    def find(ctx, cm, cc):
        return next(i for i, c in enumerate(t.conditions)
                    if (c["context"], c["motion_coh"], c["color_coh"]) == (ctx, cm, cc))

    i = find("motion", 0.5, -0.25)  # motion says right
    assert np.all(t.inputs[i, :, 0] == 1) and np.all(t.inputs[i, :, 1] == 0)
    assert np.all(t.inputs[i, :100, 2:] == 0)
    assert np.allclose(t.inputs[i, 100:, 2:], [0.75, 0.25, 0.375, 0.625])
    assert np.all(t.targets[i, 200:, 0] == 1) and np.all(t.targets[i, :200] == 0)
    assert np.all(t.targets[i, :, 1] == 0)
    j = find("color", 0.5, -0.25)  # same stimulus, colour context: left
    assert np.all(t.targets[j, 200:, 1] == 1) and np.all(t.targets[j, :, 0] == 0)
    assert np.all(t.targets[find("color", 1.0, 0.0)] == 0)  # zero relevant coherence
    assert decision(t.targets, t) == 1.0 and decision(t.targets[..., ::-1], t) == 0.0


def test_memory_number_definition():
    t = memory_number(seed=3)
    assert t.inputs.shape == (21, 120, 3)
    for i, c in enumerate(t.conditions):
        on = c["stim_on"]
        assert 10 <= on <= 20
        assert np.allclose(t.inputs[i, on:on + 10, 0], c["value"])
        assert np.count_nonzero(t.inputs[i, :, 0]) == (10 if c["value"] else 0)
        assert np.allclose(t.targets[i, 60:, 0], c["value"]) and np.all(t.targets[i, :60] == 0)
    assert t.mask[0].nonzero()[0].tolist() == list(range(60)) + list(range(80, 120))
    assert np.array_equal(memory_number(seed=3).inputs, t.inputs)
    assert not np.array_equal(memory_number(seed=4).inputs, t.inputs)
    assert decision(t.targets, t) == 1.0 and decision(t.targets + 0.2, t) == 0.0
    assert make_task("MemoryNumber", seed=3).name == "memory_number"


def test_masked_r2_hand_computed():
    outputs = np.array([[[1.0], [2.0], [9.0]], [[4.0], [0.0], [0.0]]])
    targets = np.array([[[1.0], [3.0], [0.0]], [[5.0], [0.0], [0.0]]])
    mask = np.array([[True, True, False], [True, False, False]])
    # masked targets 1, 3, 5 (mean 3, SST 8); errors 0, 1, 1 (SSE 2): R² = 1 − 2/8
    assert masked_r2(outputs, targets, mask) == pytest.approx(0.75)


def test_custom_task_rejects_mismatch():
    x, y = np.zeros((4, 50, 3)), np.zeros((4, 60, 2))
    with pytest.raises(ValueError, match=r"\(4, 60, 2\).*\(4, 50, 3\)"):
        custom_task(x, y, np.ones((4, 50), bool))
    with pytest.raises(ValueError, match=r"mask shape \(4, 40\)"):
        custom_task(x, np.zeros((4, 50, 2)), np.ones((4, 40), bool))
    t = custom_task(x, np.zeros((4, 50, 2)), np.arange(50) > 10)
    assert t.mask.shape == (4, 50) and decision(t.targets, t) is None


@pytest.mark.slow      # ~12 s of training
def test_short_go_nogo_training():
    m = EIRNN(3, 1, n_units=32, activation="relu", rec_noise=0.05, input_noise=0.05)
    res = train(m, "go_nogo", steps=200, progress=False)
    # measured R² 0.889 (seed 0; 0.852 after 150 steps); the bound leaves a margin
    assert res.r2 > 0.8 and res.accuracy == 1.0
    assert res.r2 == pytest.approx(evaluate(m, go_nogo())["r2"])
    assert min(res.history["val_loss"]) == res.best_val_loss


@pytest.mark.parametrize("activation,dale", [("tanh", True), ("sigmoid", False)])
def test_onnx_cell_round_trip(tmp_path, activation, dale):
    m = EIRNN(3, 1, n_units=32, activation=activation, dale=dale, seed=1)
    task = go_nogo()
    path = export_rnn_onnx(m, tmp_path / "cell.onnx", task=task)
    proto = onnx.load(path)
    shapes = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    assert shapes == {"W_inp": (32, 3), "W_rec": (32, 32), "W_out": (1, 32)}
    assert np.array_equal(onnx.numpy_helper.to_array(
        next(i for i in proto.graph.initializer if i.name == "W_rec")), m.W_rec.detach().numpy())
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta == {"sfn.kind": "ei_rnn_cell", "sfn.activation": activation,
                    "sfn.sigmoid_slope": "7.5", "sfn.alpha": "0.1", "sfn.dale": str(int(dale)),
                    "sfn.n_exc": "26" if dale else "32", "sfn.n_units": "32",
                    "sfn.n_inputs": "3", "sfn.n_outputs": "1", "sfn.task": "go_nogo"}
    assert [i.name for i in proto.graph.input] == ["u", "h"]
    assert [o.name for o in proto.graph.output] == ["o", "h_next"]
    with torch.no_grad():
        out, states = m(torch.from_numpy(task.inputs), noise=False)
    for batch in (slice(None), slice(0, 1)):  # dynamic batch: 11 trials, then 1
        o, s = run_onnx_trials(path, task.inputs[batch])
        assert np.abs(o - out[batch].numpy()).max() < 1e-4
        assert np.abs(s - states[batch].numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="onnxruntime differs from torch by"):
        export_rnn_onnx(m, tmp_path / "bad.onnx", atol=-1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.onnx"]  # nothing half-written
