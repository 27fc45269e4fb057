"""Train the two digits CNNs the examples and tests compile, and export them to ONNX.

Writes into toolchain/data/:
  digits_cnn_relu.onnx       plain ReLU CNN, average pooling
  digits_cnn_clipfloor.onnx  clip-floor CNN (ClipFloor, 15 levels), sfn.levels = 15
  digits_models.json         per model: test accuracy, epochs, seed, levels, lr (entries of
                             other models kept)

Both use the legacy exporter at opset 17 (BatchNorm is folded into the Conv weights).
"test_accuracy" is the torch model as trained: for the clip-floor model that is the
quantized network, which a one-timestep SFN conversion with sfn.levels should reproduce.
"onnx_test_accuracy" is the exported graph under onnxruntime: for the clip-floor model
that is the unquantized network (Clip without the floor).
Run:  .venv/bin/python examples/train_digits_models.py   (a few seconds per model on 2 idle cores)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from exporters import DigitsCNN, export_onnx, load_digits_split, train_digits  # noqa: E402
from sim.artifact import atomic_write  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parents[1] / "toolchain" / "data"
OPSET = 17
CONFIGS = {
    "digits_cnn_relu": dict(act="relu", levels=None, epochs=10, seed=0, lr=1e-2),
    "digits_cnn_clipfloor": dict(act="clipfloor", levels=15, epochs=10, seed=0, lr=1e-2),
}


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["output"], {"input": x})
    return float((logits.argmax(axis=1) == y).mean())


def record_model(record: dict, name: str, path: Path, fields: dict, test_accuracy: float,
                 seconds: float, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Enter a trained and exported model in `record` (digits_models.json) and print a line."""
    record[name] = {"file": path.name, **fields, "split_seed": 0, "opset": OPSET,
                    "test_accuracy": round(test_accuracy, 6),
                    "onnx_test_accuracy": round(onnx_accuracy(path, x_test, y_test), 6),
                    "n_test": int(len(y_test))}
    print(f"{name}: test accuracy {test_accuracy:.4f} "
          f"(exported graph {record[name]['onnx_test_accuracy']:.4f}), "
          f"trained in {seconds:.1f} s, {path.stat().st_size / 1024:.1f} KiB -> {path}")


def main() -> None:
    torch.set_num_threads(2)
    _, _, x_test, y_test = load_digits_split(seed=0)
    json_path = MODELS_DIR / "digits_models.json"
    record = json.loads(json_path.read_text()) if json_path.exists() else {}
    for name, cfg in CONFIGS.items():
        torch.manual_seed(cfg["seed"])
        model = DigitsCNN(act=cfg["act"], levels=cfg["levels"] or 15, pool="avg")
        start = time.perf_counter()
        test_accuracy = train_digits(model, cfg["epochs"], seed=cfg["seed"], lr=cfg["lr"])
        seconds = time.perf_counter() - start
        path = export_onnx(model, torch.from_numpy(x_test[:1]), MODELS_DIR / f"{name}.onnx",
                           opset=OPSET, levels=cfg["levels"])
        record_model(record, name, path, {"act": cfg["act"], "pool": "avg",
                                          "levels": cfg["levels"], "epochs": cfg["epochs"],
                                          "seed": cfg["seed"], "lr": cfg["lr"]},
                     test_accuracy, seconds, x_test, y_test)
    atomic_write(json_path, (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
