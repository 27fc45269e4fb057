"""Digits CNN, end to end: train (or load the bundled models), export to ONNX, compile to SFN,
run on the CPU simulator (and Lava), and compare float / integer reference / SNN accuracy.

    python examples/digits_cnn.py                 # train both CNNs (~1 min), then deploy
    python examples/digits_cnn.py --pretrained    # deploy the bundled models in toolchain/data/
    python examples/digits_cnn.py --pretrained --lava 360   # also on Lava, first 360 test samples
    python examples/digits_cnn.py --pretrained --transformers   # and the bundled ViT and SE CNN

Two CNNs: plain ReLU (converted after training, calibrated on the training split) and clip-floor
(trained with the quantized activation it will be deployed with, 15 levels). With --transformers,
also the digits ViT and the squeeze-excitation CNN (examples/train_transformer_models.py),
converted after training.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sim.cpu  # noqa: E402
from exporters.digits import load_digits_split  # noqa: E402
from toolchain.compiler import compile_onnx  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "toolchain" / "data"
VARIANTS = {"relu": dict(act="relu", levels=None), "clipfloor": dict(act="clipfloor", levels=15)}


def train_and_export(out_dir: Path, epochs: int, seed: int) -> dict[str, Path]:
    import torch

    from exporters.digits import DigitsCNN, train_digits
    from exporters.onnx_export import export_onnx
    torch.set_num_threads(2)  # the bundled models were trained with 2 threads (results depend on it)
    paths = {}
    for name, v in VARIANTS.items():
        torch.manual_seed(seed)
        model = DigitsCNN(act=v["act"], levels=v["levels"] or 15)
        acc = train_digits(model, epochs=epochs, seed=seed)
        print(f"trained {name}: float test accuracy {acc:.4f}")
        paths[name] = export_onnx(model, torch.zeros(1, 1, 8, 8), out_dir / f"digits_cnn_{name}.onnx",
                                  levels=v["levels"])
    return paths


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float((scores.argmax(axis=1) == labels).mean())


def deploy(path: Path, x_train, x_test, y_test, lava_samples: int, levels: int | None) -> dict:
    compiled = compile_onnx(path, calib=x_train, levels=levels)
    float_scores = ort.InferenceSession(str(path)).run(None, {"input": x_test})[0]
    with tempfile.TemporaryDirectory() as tmp:
        compiled.write_reference(Path(tmp) / "ref.onnx")
        ref_out = ort.InferenceSession(str(Path(tmp) / "ref.onnx")).run(["output"], {"input": x_test})[0]
    cpu = sim.cpu.run(compiled.artifact, x_test)
    row = {"model": path.name, "levels": compiled.artifact.meta["levels"],
           "float": accuracy(float_scores, y_test), "reference": accuracy(ref_out, y_test),
           "snn_cpu": accuracy(cpu.output, y_test),
           "cpu_equals_reference": bool(np.array_equal(cpu.output, ref_out)),
           "synops_per_sample": sum(s.synops for s in cpu.stats.values()) / len(x_test)}
    if lava_samples:
        from sim import lava as sim_lava
        n = min(lava_samples, len(x_test))
        lava = sim_lava.run(compiled.artifact, x_test[:n])
        row["snn_lava"] = accuracy(lava.output, y_test[:n])
        row["lava_samples"] = n
        row["lava_equals_cpu"] = bool(np.array_equal(lava.output, cpu.output[:n]) and
                                      np.array_equal(lava.accumulator, cpu.accumulator[:n]))
    return row


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", action="store_true", help="use the bundled ONNX models")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--levels", type=int, help="override the spike levels of the ReLU model")
    ap.add_argument("--lava", type=int, default=0, metavar="N", help="also run N test samples on Lava")
    ap.add_argument("--out", type=Path, help="where trained models go (default: a temp folder)")
    ap.add_argument("--transformers", action="store_true",
                    help="with --pretrained: also the bundled digits ViT and squeeze-excitation CNN")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    x_train, _, x_test, y_test = load_digits_split()
    if args.pretrained:
        paths = {name: MODELS / f"digits_cnn_{name}.onnx" for name in VARIANTS}
    else:
        out = args.out or Path(tempfile.mkdtemp(prefix="digits-"))
        out.mkdir(parents=True, exist_ok=True)
        paths = train_and_export(out, args.epochs, args.seed)
    rows = [deploy(paths[name], x_train, x_test, y_test, args.lava,
                   args.levels if name == "relu" else None) for name in VARIANTS]
    if args.pretrained and args.transformers:
        rows += [deploy(MODELS / f"digits_{name}.onnx", x_train, x_test, y_test, args.lava, None)
                 for name in ("vit", "se")]
    if args.json:
        print(json.dumps(rows, indent=1))
        return rows
    table = Table(title=f"scikit-learn digits, {len(x_test)} test samples, T = 1")
    cols = ["model", "levels", "float", "reference", "snn_cpu", "cpu_equals_reference",
            "synops_per_sample"] + (["snn_lava", "lava_samples", "lava_equals_cpu"] if args.lava else [])
    for c in cols:
        table.add_column(c.replace("_", " "))
    for r in rows:
        table.add_row(*[f"{r[c]:.4f}" if isinstance(r[c], float) and c != "synops_per_sample"
                        else f"{r[c]:,.0f}" if c == "synops_per_sample" else str(r[c]) for c in cols])
    Console(width=160).print(table)
    return rows


if __name__ == "__main__":
    main()
