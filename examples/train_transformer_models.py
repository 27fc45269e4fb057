"""Train the digits vision transformer and squeeze-excitation CNN the examples and tests compile,
and export them to ONNX.

Writes into toolchain/data/:
  digits_vit.onnx   DigitsViT: 2×2 patches (16 tokens + a class token), dim 32, 2 pre-LayerNorm
                    blocks of 4 heads, GELU MLP of 64 (exporters/transformer.py)
  digits_se.onnx    DigitsSE: conv, an inverted residual block with a squeeze-excitation gate
                    (hardsigmoid), conv, mean, linear
and adds their entries to digits_models.json (test accuracy, epochs, seed, lr). Both use the
legacy exporter at opset 17 (LayerNormalization as one op; the compiler writes it out).
Run:  .venv/bin/python examples/train_transformer_models.py   (a few minutes on 2 idle cores)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from exporters import export_onnx, load_digits_split, train_digits  # noqa: E402
from exporters.transformer import DigitsSE, DigitsViT  # noqa: E402
from sim.files import atomic_write  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits_models import MODELS_DIR, OPSET, record_model  # noqa: E402

CONFIGS = {
    "digits_vit": dict(build=DigitsViT, epochs=24, seed=0, lr=3e-3, batch_size=64),
    "digits_se": dict(build=DigitsSE, epochs=12, seed=0, lr=1e-2, batch_size=64),
}


def main() -> None:
    torch.set_num_threads(2)
    _, _, x_test, y_test = load_digits_split(seed=0)
    json_path = MODELS_DIR / "digits_models.json"
    record = json.loads(json_path.read_text()) if json_path.exists() else {}
    for name, cfg in CONFIGS.items():
        torch.manual_seed(cfg["seed"])
        model = cfg["build"]()
        start = time.perf_counter()
        test_accuracy = train_digits(model, cfg["epochs"], seed=cfg["seed"], lr=cfg["lr"],
                                     batch_size=cfg["batch_size"])
        seconds = time.perf_counter() - start
        # a batch of 2 lets the dynamo exporter keep the batch axis symbolic (the class token's
        # expand reads it); the legacy exporter takes it as well
        path = export_onnx(model, torch.from_numpy(x_test[:2]), MODELS_DIR / f"{name}.onnx",
                           opset=OPSET)
        record_model(record, name, path, {"architecture": cfg["build"].__name__,
                                          "epochs": cfg["epochs"], "seed": cfg["seed"],
                                          "lr": cfg["lr"], "batch_size": cfg["batch_size"]},
                     test_accuracy, seconds, x_test, y_test)
    atomic_write(json_path, (json.dumps(record, indent=2) + "\n").encode())
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
