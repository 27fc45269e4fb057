"""Bundled example models and their data, so a first run needs nothing but this package.

- `DIGITS_CNN`: the digits CNN (3 conv + BatchNorm + ReLU, average pooling, linear; trained on
  scikit-learn's digits, 99.72% test accuracy), as ONNX; `DIGITS_CNN_CLIPFLOOR` the same CNN
  trained with clip-floor activations of 15 levels.
- `DIGITS_VIT`: a vision transformer for the digits (2×2 patches, class token, 2 pre-LayerNorm
  blocks of 4 heads, GELU MLP); `DIGITS_SE`: a MobileNetV3-style CNN with a squeeze-excitation
  gate (examples/train_transformer_models.py trains and exports both).
- `load_digits_split()`: scikit-learn's 8×8 digits, the stratified 80/20 split the models were
  trained on; `write_digits(folder)` writes it as .npy files next to a copy of the model
  (`toolchain example digits --out DIR`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sim.files import check_folder, make_folder, remove_folders, write_files

DATA = Path(__file__).resolve().parent / "data"
DIGITS_CNN = DATA / "digits_cnn_relu.onnx"
DIGITS_CNN_CLIPFLOOR = DATA / "digits_cnn_clipfloor.onnx"
DIGITS_VIT = DATA / "digits_vit.onnx"
DIGITS_SE = DATA / "digits_se.onnx"


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(x_train, y_train, x_test, y_test)``: a stratified 80/20 split.

    Images are float32 of shape (N, 1, 8, 8) with pixel / 16 in [0, 1]; labels int64.
    The split is ``train_test_split(test_size=0.2, stratify=y, random_state=seed)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y,
                                                        random_state=seed)
    return x_train, y_train, x_test, y_test


def _npy(array: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_digits(folder: str | Path) -> dict[str, Path]:
    """Write calib.npy (the 1,437 training images), x_test.npy (360 test images), y_test.npy
    (their labels) and digits_cnn.onnx into `folder` (created if missing); return the paths.
    The four files are written together (sim.files.write_files): all of them or none."""
    folder = Path(folder)
    check_folder(folder)
    x_train, _, x_test, y_test = load_digits_split()
    paths = {"calib": folder / "calib.npy", "x_test": folder / "x_test.npy",
             "y_test": folder / "y_test.npy", "model": folder / "digits_cnn.onnx"}
    data = {"calib": _npy(x_train), "x_test": _npy(x_test), "y_test": _npy(y_test),
            "model": Path(DIGITS_CNN).read_bytes()}
    created = make_folder(folder)
    try:
        write_files([(paths[k], data[k]) for k in paths])
    except BaseException:
        remove_folders(created)
        raise
    return paths
