import sim  # noqa: F401  (first: picks numpy's BLAS kernels before numpy loads, see sim/__init__)
