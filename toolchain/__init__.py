"""The SFN toolchain: ONNX → Scale-and-Fire spiking graphs → Loihi-style integers.

    import toolchain, sim.cpu, sim.lava
    art = toolchain.compile("model.onnx", calib=x_calib)   # -> sim.artifact.Artifact
    y = sim.cpu.run(art, x).output       # what the ONNX model outputs (.logits: before softmax)
    art.save("model.sfn"); art = toolchain.load("model.sfn")

`compile` (toolchain.api), `compile_onnx` (the same, returning the compiler's full record:
per-layer rows, notes, agreement, the reference-ONNX writer), `load`/`Artifact`
(sim.artifact), `examples` (the bundled digits CNN and data), `ToolchainError` (the root of
every error it reports). They load on first use (PEP 562), so `import toolchain.cli` stays quick.
"""
from importlib import import_module

import sim  # noqa: F401  (first: picks numpy's BLAS kernels before numpy loads, see sim/__init__)

_EXPORTS = {"compile": "toolchain.api", "compile_onnx": "toolchain.compiler",
            "load": "sim.artifact", "Artifact": "sim.artifact", "examples": None,
            "ToolchainError": "toolchain.errors"}
__all__ = sorted(_EXPORTS) + ["__version__"]

try:
    from importlib.metadata import PackageNotFoundError, version as _version
    __version__ = _version("sfn-toolchain")
except PackageNotFoundError:    # run from a source tree that was never installed
    __version__ = "unknown"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _EXPORTS[name] is None:
        return import_module(f"{__name__}.{name}")
    return getattr(import_module(_EXPORTS[name]), name)
