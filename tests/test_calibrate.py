"""Calibration statistics: the top-k percentile equals numpy's, bit for bit."""
import numpy as np
import pytest

from toolchain.calibrate import upper_percentile


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("q", [99.99, 99.9, 99.0, 100.0, 97.3])
def test_upper_percentile_equals_numpy(seed, q):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30000))
    values = np.abs(rng.standard_normal((int(rng.integers(1, 40)), n))).astype(np.float32)
    values[:, : n // 3] = 0                        # dead stretches: many equal values
    if seed % 2:
        values = np.round(values * 4) / 4           # ties at the interpolated ranks
    np.testing.assert_array_equal(upper_percentile(values, q, axis=1),
                                  np.percentile(values, q, axis=1))
    assert upper_percentile(values, q) == np.percentile(values, q)


@pytest.mark.parametrize("batch_bytes", [1 << 30, 300_000])
def test_streamed_statistics_equal_the_full_percentile(monkeypatch, batch_bytes):
    """Keeping only each channel's largest values over the batches gives the same statistics,
    bit for bit, as the percentile over every kept value (one batch, or many small ones)."""
    import toolchain.calibrate as cal
    from toolchain.examples import DIGITS_CNN, load_digits_split
    from toolchain.onnx_import import import_onnx
    x = load_digits_split()[0][:300]
    imported = import_onnx(DIGITS_CNN)
    names = imported.graph.tensors()
    elements = sum(int(np.prod(imported.graph[n]["shape"])) for n in names)
    monkeypatch.setattr(cal, "BATCH_BYTES", batch_bytes)
    streamed = cal.calibrate(imported.source, x, names, 99.99, sample_elements=elements)
    monkeypatch.setattr(cal, "_upper", lambda n, p: False)      # every value kept
    full = cal.calibrate(imported.source, x, names, 99.99, sample_elements=elements)
    for n in names:
        np.testing.assert_array_equal(streamed[n].pct_abs, full[n].pct_abs)
        assert streamed[n].layer_pct_abs == full[n].layer_pct_abs
        np.testing.assert_array_equal(streamed[n].max_abs, full[n].max_abs)
