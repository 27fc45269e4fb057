"""sim/__init__ names numpy's OpenBLAS kernel set from the CPU flags before numpy loads — and
leaves it alone when the user chose one or numpy came first."""
import os
import subprocess
import sys

import pytest

import sim

PROBE = ("import os, sys; {first}; import numpy; from threadpoolctl import threadpool_info; "
         "print(os.environ.get('OPENBLAS_CORETYPE', '-'), [i.get('architecture') for i in "
         "threadpool_info() if i.get('user_api') == 'blas' and 'numpy' in i.get('filepath', '')])")


def _probe(first: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"} | env
    return subprocess.run([sys.executable, "-c", PROBE.format(first=first)], env=environ,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_core_from_flags():
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma", "sse3"}
    assert sim._core_for(avx512) == "SkylakeX"
    assert sim._core_for(avx512 - {"avx512vl"}) == "Haswell"
    assert sim._core_for({"avx2", "fma", "sse3"}) == "Haswell"
    assert sim._core_for({"avx", "sse3"}) is None


def test_set_before_numpy_only_and_never_over_the_users_choice():
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/cpuinfo")
    with open("/proc/cpuinfo") as f:
        flags = next(set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags"))
    want = sim._core_for(flags)
    out = _probe("import sim")
    assert out.split()[0] == (want or "-")
    if want:   # and OpenBLAS took it (architecture names are OpenBLAS's own spelling)
        assert want.lower() in out.lower().split(None, 1)[1]
    assert _probe("import numpy; import sim").split()[0] == "-"          # numpy first: too late
    assert _probe("import sim", OPENBLAS_CORETYPE="Haswell").split()[0] == "Haswell"
