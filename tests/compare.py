"""The one comparator of simulation results: bit-for-bit equality of everything a run returns;
and the emitted integer reference ONNX run under onnxruntime, what the runs are compared with."""
from __future__ import annotations

import numpy as np


def assert_same(result, reference, stats: bool = True):
    """Accumulator, logits and output (values and dtypes; output is the logits through the
    model's final softmax, the same softmax on both sides), every node's statistics, sample and
    step counts, and every recorded value identical. `stats=False` skips the statistics (a run that
    counts nothing against one that does)."""
    np.testing.assert_array_equal(result.accumulator, reference.accumulator)
    np.testing.assert_array_equal(result.logits, reference.logits)
    assert result.softmax == reference.softmax
    np.testing.assert_array_equal(result.output, reference.output)
    assert result.output.dtype == reference.output.dtype
    assert result.accumulator.dtype == reference.accumulator.dtype == np.int64
    if stats:
        assert result.stats == reference.stats
    assert (result.samples, result.timesteps) == (reference.samples, reference.timesteps)
    assert result.recorded.keys() == reference.recorded.keys()
    for name in result.recorded:
        np.testing.assert_array_equal(result.recorded[name], reference.recorded[name])
        assert result.recorded[name].dtype == reference.recorded[name].dtype == np.int64


def reference_onnx_outputs(art, x):
    """(output, accumulator) of `art`'s integer reference ONNX (toolchain.reference) under
    onnxruntime on inputs x."""
    import onnxruntime as ort

    from toolchain.reference import emit_reference
    sess = ort.InferenceSession(emit_reference(art).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(["output", "accumulator"], {"input": x})
