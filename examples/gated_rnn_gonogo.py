"""Train a torch.nn.LSTM and a torch.nn.GRU (+ nn.Linear read-out) on Go/NoGo, export each with
the legacy exporter (ONNX LSTM / GRU operators), compile them calibrated on the task's trials and
compare float (onnxruntime) and deployed (sim.cpu) networks on held-out trials.

Training: masked MSE, Adam (lr 0.01), batches of 32 trials whose values are drawn uniformly
from [0, 1], seed 0; the LSTM reads batch-first trials (X behind Transpose(1, 0, 2)), the GRU
time-major ones. Calibration: the task's 11 trials (values 0, 0.1, …, 1). Held out: 20 trials
with values 0.025, 0.075, …, 0.975. Scores: masked R² and the Go/NoGo decision accuracy.

Run:  nice -n 5 .venv/bin/python examples/gated_rnn_gonogo.py [--units 32] [--steps 300]
      [--internal-levels 63] [--out DIR]
tests/test_lstm_gru.py trains its networks with `train` and `export` from here.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

KINDS = ("lstm", "gru")
HELD_OUT = np.linspace(0.025, 0.975, 20)


def train(kind: str, units: int = 32, steps: int = 300, seed: int = 0):
    """A trained nn.LSTM/nn.GRU + nn.Linear on Go/NoGo (module docstring), in eval mode."""
    import torch
    from torch import nn

    batch_first = kind == "lstm"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            cls = nn.LSTM if kind == "lstm" else nn.GRU
            self.rnn = cls(3, units, batch_first=batch_first)
            self.lin = nn.Linear(units, 1)

        def forward(self, x):
            return self.lin(self.rnn(x)[0])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # small batches: one thread is fastest, and reproducible
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    try:
        _fit(net, opt, rng, steps, batch_first)
    finally:
        torch.set_num_threads(threads)
    net.batch_first = batch_first
    return net.eval()


def _fit(net, opt, rng, steps: int, batch_first: bool) -> None:
    import torch

    from toolchain.tasks import make_task

    for _ in range(steps):
        task = make_task("go_nogo", values=rng.uniform(0, 1, 32))
        x, y = torch.from_numpy(task.inputs), torch.from_numpy(task.targets)
        mask = torch.from_numpy(task.mask)
        out = net(x) if batch_first else net(x.transpose(0, 1)).transpose(0, 1)
        loss = ((out - y) ** 2)[mask].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def export(net, path) -> Path:
    """The trained network as ONNX through the legacy exporter (LSTM/GRU operators), input x
    (batch, seq, 3) for a batch-first network, (seq, batch, 3) otherwise."""
    import torch

    axes = {0: "batch", 1: "seq"} if net.batch_first else {0: "seq", 1: "batch"}
    with warnings.catch_warnings():   # the legacy exporter is chosen on purpose
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 5, 3),), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes})
    return Path(path)


def measure(path, internal_levels: int = 63) -> dict:
    """Compile `path` calibrated on the Go/NoGo trials; float and deployed scores on the
    held-out trials."""
    import onnx

    import sim.cpu
    from toolchain.compiler import compile_onnx
    from toolchain.rnn.evaluate import float_trials
    from toolchain.tasks import decision, make_task, masked_r2

    start = time.perf_counter()
    compiled = compile_onnx(path, calib=make_task("go_nogo").inputs,
                            internal_levels=internal_levels)
    seconds = time.perf_counter() - start
    test = make_task("go_nogo", values=HELD_OUT)
    float_o = float_trials(onnx.load(path), str(path), test.inputs)
    deployed = sim.cpu.run(compiled.artifact, test.inputs).output
    return {"float_r2": masked_r2(float_o, test.targets, test.mask),
            "deployed_r2": masked_r2(deployed, test.targets, test.mask),
            "float_accuracy": decision(float_o, test),
            "deployed_accuracy": decision(deployed, test),
            "rel_rms_calibration": compiled.agreement["rel_rms_error"],
            "compile_s": seconds, "compiled": compiled}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--internal-levels", type=int, default=63)
    ap.add_argument("--out", help="keep the ONNX models in this directory")
    args = ap.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    print("| cell | float_r2 | deployed_r2 | float_accuracy | deployed_accuracy | "
          "rel_rms_calibration | train_s |")
    print("|---|---|---|---|---|---|---|")
    for kind in KINDS:
        start = time.perf_counter()
        net = train(kind, args.units, args.steps)
        seconds = time.perf_counter() - start
        row = measure(export(net, out / f"go_nogo_{kind}.onnx"), args.internal_levels)
        print(f"| {kind} | {row['float_r2']:.3f} | {row['deployed_r2']:.3f} | "
              f"{row['float_accuracy']:.3f} | {row['deployed_accuracy']:.3f} | "
              f"{row['rel_rms_calibration']:.4f} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
