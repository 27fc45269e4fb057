"""Simulators of SFN artifacts: `sim.cpu` (batched numpy/torch) and `sim.lava` (Lava processes),
both held to the integer contract in `sim.semantics`.

Importing this package before numpy also picks numpy's OpenBLAS kernels (see `_blas_core`), and
before torch a passive OpenMP wait policy (see `_omp_passive`)."""
import os as _os
import sys as _sys

# OPENBLAS_CORETYPE for CPU flag sets, best first (OpenBLAS's SkylakeX kernels need these five)
_CORES = (("SkylakeX", {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}),
          ("Haswell", {"avx2", "fma"}))


def _blas_core() -> str | None:
    """numpy's bundled OpenBLAS (0.3.23) does not recognize recent Xeons (this machine's among
    them) and falls back to its SSE3 "Prescott" kernels: float32 GEMMs ~4× slower, and they are
    what the Lava process models and sim.cpu's numpy path multiply with. Before numpy is loaded,
    name the kernel set from the CPU's own flags — never when the user has set
    OPENBLAS_CORETYPE, when numpy is already loaded (too late: it then stays as detected), or
    off Linux. Returns the core type set, if any."""
    if "OPENBLAS_CORETYPE" in _os.environ or "numpy" in _sys.modules or \
            not _sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f
                          if line.startswith("flags")), set())
    except OSError:
        return None
    core = _core_for(flags)
    if core:
        _os.environ["OPENBLAS_CORETYPE"] = core
    return core


def _core_for(flags: set[str]) -> str | None:
    return next((core for core, needed in _CORES if needed <= flags), None)


_blas_core()


def _omp_passive() -> bool:
    """torch's OpenMP threads spin at every barrier by default: on a busy machine, where a
    thread of a parallel region is descheduled, its partner spins through the other's time
    slices and a two-thread sim.cpu run becomes several to 70 times slower than a one-thread
    one (docs/performance.md, "Threads"). With OMP_WAIT_POLICY=PASSIVE waiting threads sleep
    instead. The policy is read once, when OpenMP starts with torch: set it here, before torch
    is imported — never over a value the user set, nor once torch is loaded. Returns whether
    the policy in force is passive."""
    if "torch" not in _sys.modules:
        _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return _os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


OMP_PASSIVE = _omp_passive()
