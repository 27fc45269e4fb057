"""Converters, one module per op family; importing this package registers all of them."""
from toolchain.onnx_import.converters import (activation, arith, linear, norm, pool,  # noqa: F401
                                              shape_ops, softmax)
