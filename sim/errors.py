"""The one error hierarchy of the project (re-exported by `toolchain.errors`).

Every failure a user can cause (a bad file, an unsupported op, a model that does not fit, a run
that fails) is a `ToolchainError` whose message says what was wrong, where, and what to do.
The CLI prints the message on one line and exits non-zero; `--debug` shows the traceback.
"""


class ToolchainError(Exception):
    """Root of all errors the toolchain reports to its user."""

    exit_code = 2


class InputFileError(ToolchainError):
    """A file the user gave is missing, unreadable, or not what it claims to be."""


class ModelError(ToolchainError):
    """The ONNX model is malformed: bad graph structure, dangling names, bad attributes."""


class UnsupportedOpError(ToolchainError):
    """An ONNX op (or an op in a position) the SFN graph cannot express."""


class ShapeError(ToolchainError):
    """A shape is dynamic where it must be static, or data does not match the model."""


class QuantizationError(ToolchainError):
    """The network cannot be quantized to the target (24-bit overflow, weight range)."""


class ArtifactError(ToolchainError):
    """A `.sfn` artifact is corrupt, foreign, of an unknown version, or inconsistent."""


class SimulationError(ToolchainError):
    """A simulator failed (numeric policy violated, Lava process failed or timed out)."""
