"""SFN graph node records: the typed, serializable nodes both simulators execute.

Every record names its inputs and its per-sample output `shape` (no batch axis). Channel-wise
parameters are stored with a shape that broadcasts against `shape` (e.g. (C, 1, 1) for a conv
layer, (F,) for a dense one). All values crossing an edge are integers. Each kind is defined in
its own module of `sim.ops` (fields, equation, check, evaluation, reference ONNX, counts and
traits); this module gathers them under one name.
"""
from sim.ops import *  # noqa: F401,F403
from sim.ops import KINDS, __all__  # noqa: F401
