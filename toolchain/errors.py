"""The toolchain's error hierarchy. The classes live in `sim.errors` (the runtimes raise them
too, and `sim` imports nothing from `toolchain`); they are re-exported here for the compiler's
modules and for users who catch them."""
from sim.errors import (ArtifactError, InputFileError, ModelError,  # noqa: F401
                        OutputFileError, QuantizationError, ShapeError, SimulationError,
                        ToolchainError, UnsupportedOpError)

__all__ = ["ToolchainError", "InputFileError", "OutputFileError", "ModelError",
           "UnsupportedOpError", "ShapeError", "QuantizationError", "ArtifactError",
           "SimulationError"]


class MappingError(ToolchainError):
    """The network does not fit the target: a limit no split across cores can get around."""


__all__.append("MappingError")
