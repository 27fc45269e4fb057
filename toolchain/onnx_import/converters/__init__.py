"""Converters, one module per op family; importing this package registers all of them."""
from toolchain.onnx_import.converters import (activation, arith, elementwise,  # noqa: F401
                                              index, linear, norm, pad, pool, shape_ops,
                                              softmax)
