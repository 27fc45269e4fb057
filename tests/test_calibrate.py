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
