"""PyTorch side of the toolchain: conversion-friendly layers, ONNX export, example models.

The names below load on first use (PEP 562), so importing a submodule — `toolchain rnn train`
is registered from exporters.rnn.cli — does not import torch until it is needed."""
from importlib import import_module

_EXPORTS = {"DigitsCNN": ".digits", "accuracy": ".digits", "load_digits_split": ".digits",
            "train_digits": ".digits", "ClipFloor": ".layers", "set_quantize": ".layers",
            "ExportCheckError": ".onnx_export", "export_onnx": ".onnx_export"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
