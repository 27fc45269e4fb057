"""Levels against timesteps on digits: one-timestep SFN conversion vs binary rate coding.

    .venv/bin/python benchmarks/timesteps.py [--models digits_cnn resnet18 mobilenetv2 densenet]

For each model (scikit-learn digits, stratified 80/20 split, calibration = the 1437 training
images, accuracy on the 360 test images) one table:

- float: onnxruntime on the source ONNX;
- SFN at T = 1 with levels L = 3, 7, 15, 31, 63 (`compile_onnx(..., levels=L)`), per-channel
  thresholds (the default) and per-layer ones (`per_channel=False`);
- binary integrate-and-fire (rate coding) at T = 1, 2, 4, …, 64 from the same compiled network
  (the default one: L = 15, per-channel): `sim.cpu.run(art, x, timesteps=T, binary=True)`, every
  spike carrying the neuron's top payload L, reset by subtraction, the readout averaged over T
  (T = 1 included: one binary spike of payload L per neuron at most);
- uniform against adaptive fire functions for the ReLU layers at L = 3, 7, 15 (per-channel):
  `fire="adaptive"` (levels fitted to the calibration distribution: quantile start, Lloyd-Max
  refinement) and `fire="quantile"` (the quantile placement alone); uniform and adaptive also
  with the λ scale search (`scale_search=True`, the chosen λ in the row's label);

with the relative RMS error of the readout against the float model on the test images
(probabilities where the model ends in a softmax) and the synaptic operations per inference
(Σ stats.synops / samples, all T steps counted). `--no-fire` skips the fire-function rows.

Models: `digits_cnn` is toolchain/data/digits_cnn_relu.onnx; `mobilenetv2` and `densenet` are
the trained zoo models shipped in tests/data/; `resnet18` is trained here (tests/zoo.py, 8
epochs, about 10 s on one thread).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sim  # noqa: E402,F401  (before numpy: its BLAS kernels, see sim/__init__.py)

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(ROOT / "tests"))

import sim.cpu  # noqa: E402
from toolchain.compiler import compile_onnx  # noqa: E402

LEVELS = (3, 7, 15, 31, 63)
TIMESTEPS = (1, 2, 4, 8, 16, 32, 64)
FIRE_LEVELS = (3, 7, 15)


def model_path(name: str, tmp: Path) -> tuple[Path, int]:
    """(ONNX path, input size) of a model name."""
    if name == "digits_cnn":
        return ROOT / "toolchain" / "data" / "digits_cnn_relu.onnx", 8
    import json

    import zoo
    shipped = ROOT / "tests" / "data" / f"zoo_{name}.onnx"
    if shipped.exists():
        meta = json.loads((ROOT / "tests" / "data" / "zoo_models.json").read_text())[name]
        return shipped, meta["size"]
    model, _, seconds = zoo.train(name, zoo.EPOCHS)
    print(f"({name}: trained {zoo.EPOCHS} epochs in {seconds:.0f} s)", flush=True)
    return zoo.export(model, tmp / f"{name}.onnx"), model.input_shape[-1]


def synops(res) -> float:
    return sum(s.synops for s in res.stats.values()) / res.samples


def table(name: str, tmp: Path, fire_rows: bool = True) -> list[str]:
    import zoo
    path, size = model_path(name, tmp)
    x_tr, _, x_te, y_te = zoo.digits(size)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    float_out = sess.run(None, {sess.get_inputs()[0].name: x_te})[0]
    float_acc = zoo.accuracy_of(float_out, y_te)
    lines = [f"### {name} ({path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name})",
             "", "| mode | levels L | T | accuracy | Δ vs float (points) | rel. error vs float | "
             "SynOps / inference |", "|---|---|---|---|---|---|---|",
             f"| float (onnxruntime) | — | — | {float_acc:.2%} | — | — | — |"]

    def row(mode, L, T, res):
        acc = zoo.accuracy_of(res.output, y_te)
        out = res.output
        err = np.sqrt(np.mean((out - float_out) ** 2) / np.mean(float_out ** 2))
        lines.append(f"| {mode} | {L} | {T} | {acc:.2%} | {100 * (acc - float_acc):+.2f} | "
                     f"{err:.3f} | {synops(res):,.0f} |")
        print(lines[-1], flush=True)

    default = None
    for per_channel in (True, False):
        for L in LEVELS:
            compiled = compile_onnx(path, calib=x_tr, levels=L, per_channel=per_channel)
            row(f"SFN, per-{'channel' if per_channel else 'layer'} θ", L, 1,
                sim.cpu.run(compiled.artifact, x_te))
            if per_channel and L == 15:
                default = compiled.artifact
    for T in TIMESTEPS:
        row("binary IF (rate), per-channel θ", 15, T, sim.cpu.run(default, x_te, timesteps=T, binary=True))
    if fire_rows:
        for search in (False, True):
            for fire in ("uniform", "adaptive", "quantile"):
                if (fire == "uniform" and not search) or (fire == "quantile" and search):
                    continue  # uniform: the per-channel rows above
                for L in FIRE_LEVELS:
                    compiled = compile_onnx(path, calib=x_tr, levels=L, fire=fire,
                                            scale_search=search)
                    lam = compiled.artifact.meta["scale"]["lambda"]
                    label = f"SFN {fire}" + (f", λ search (λ = {lam:g})" if search else "")
                    row(label, L, 1, sim.cpu.run(compiled.artifact, x_te))
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+",
                    default=["digits_cnn", "resnet18", "mobilenetv2", "densenet"])
    ap.add_argument("--no-fire", action="store_true",
                    help="Skip the adaptive / quantile / λ-search rows.")
    args = ap.parse_args()
    out = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            out += table(name, Path(tmp), not args.no_fire) + [""]
    print("\n".join(out))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
