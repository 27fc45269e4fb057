"""PyTorch side of the toolchain: conversion-friendly layers, ONNX export, example models."""

from .digits import DigitsCNN, accuracy, load_digits_split, train_digits
from .layers import ClipFloor, set_quantize
from .onnx_export import ExportCheckError, export_onnx

__all__ = [
    "ClipFloor",
    "DigitsCNN",
    "ExportCheckError",
    "accuracy",
    "export_onnx",
    "load_digits_split",
    "set_quantize",
    "train_digits",
]
