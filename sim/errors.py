"""The one error hierarchy of the project (re-exported by `toolchain.errors`).

Every failure a user can cause (a bad file, an unsupported op, a model that does not fit, a run
that fails) is a `ToolchainError` whose message says what was wrong, where, and what to do.
The CLI prints the message on one line and exits non-zero; `--debug` shows the traceback.
"""
import contextlib
import signal
import threading


class ToolchainError(Exception):
    """Root of all errors the toolchain reports to its user."""

    exit_code = 2


class InputFileError(ToolchainError):
    """A file the user gave is missing, unreadable, or not what it claims to be."""


class OutputFileError(ToolchainError):
    """A file the toolchain was asked to write cannot be written there: a missing or read-only
    folder, a folder or a block device in its place, a full disk, one of the command's inputs."""


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


class Terminated(BaseException):
    """The process received SIGTERM or SIGHUP: raised in the main thread (like KeyboardInterrupt
    for Ctrl-C) so that what a command started is ended and what it was writing is removed.
    Not a ToolchainError: it is not the user's input that failed."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def raise_on_termination():
    """Within the block, SIGTERM and SIGHUP raise `Terminated` in the main thread, so `finally`
    blocks and the Lava guard end what was started (a signal whose handler is not the default —
    a caller's own, or SIGHUP ignored under nohup — is left alone; elsewhere than in the main
    thread this does nothing)."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
                installed[sig] = signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)
