"""What a Lava run leaves in the operating system, tied to the process that started it.

Lava runs every process model in a forked child and passes messages through POSIX shared
memory (multiprocessing's SharedMemoryManager, a server process of its own). A run that ends
normally, or that the guard ends (sim.lava.guard, which also turns SIGTERM and SIGHUP into an
exception), releases all of it. This module makes the same hold when the process that started
the run dies without a chance to clean up (SIGKILL, a crash):

- segments: the owner creates them itself (no manager process), named
  `sfn_<owner pid>_<run token>_<n>`, and keeps them out of multiprocessing's resource tracker
  (which would warn about them at exit); the run's shutdown unlinks them;
- the children: every child forked by the run's start thread watches a pipe whose write end
  only the owner holds. When the owner dies the read returns end-of-file, and the child unlinks
  its run's segments and exits, so nothing of the run outlives it by more than a moment. The
  children ignore SIGINT (Ctrl-C reaches the whole process group; the owner ends its children
  itself, and no child prints a KeyboardInterrupt traceback) and take SIGTERM and SIGHUP by
  their default action, not by the owner's handlers;
- stale segments: every run first removes the `sfn_*` segments whose owner process is gone (a
  machine that lost power mid-run, say); a live process's segments are never touched.
"""
from __future__ import annotations

import itertools
import os
import re
import secrets
import signal
import threading

SHM_DIR = "/dev/shm"          # where Linux keeps POSIX shared memory (the stale sweep reads it)
START_THREAD = "sim.lava start"   # the guard's thread that compiles the run and forks its children
_NAME = re.compile(r"sfn_(\d+)_[0-9a-f]+_\d+")
FORK_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_forking: "Run | None" = None     # the run whose children are being forked
_lock = threading.Lock()
_installed = False


class Run:
    """One Lava run's segments and its owner pipe."""

    def __init__(self):
        self.owner = os.getpid()
        self.token = secrets.token_hex(6)
        self.read_fd, self.write_fd = os.pipe()
        self.segments: list = []
        self._count = itertools.count()

    def name(self) -> str:
        return f"sfn_{self.owner}_{self.token}_{next(self._count)}"

    def segment(self, size: int):
        """A new shared-memory segment of `size` bytes, named for this run and owner."""
        from multiprocessing import resource_tracker
        from multiprocessing.shared_memory import SharedMemory
        shm = SharedMemory(name=self.name(), create=True, size=size)
        resource_tracker.unregister(shm._name, "shared_memory")  # unlinked by this module
        self.segments.append(shm)
        return shm

    def release(self) -> None:
        """Close and unlink every segment (the run's shutdown)."""
        for shm in self.segments:
            try:
                shm.close()
            except BufferError:   # a view still open in this process: unlinking is enough
                pass
        unlink(shm.name for shm in self.segments)
        self.segments = []

    def close(self) -> None:
        """Close the owner pipe (after the run's children have ended)."""
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.read_fd = self.write_fd = -1


def unlink(names) -> None:
    """shm_unlink each name, ignoring those already gone."""
    import _posixshmem
    for name in names:
        try:
            _posixshmem.shm_unlink("/" + name.lstrip("/"))
        except (FileNotFoundError, OSError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


def sweep_stale() -> list[str]:
    """Unlink the run segments whose owner process no longer exists; return their names."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    stale = [n for n in names if (m := _NAME.fullmatch(n)) and not _alive(int(m.group(1)))]
    unlink(stale)
    return stale


class _Segments:
    """Stands in for multiprocessing's SharedMemoryManager inside Lava's: no server process,
    segments made by `run`."""

    def __init__(self, run: Run | None):
        self.run = run or Run()

    def start(self) -> None:
        pass

    def SharedMemory(self, size: int):  # noqa: N802 - the name Lava calls
        return self.run.segment(size)

    def shutdown(self) -> None:
        self.run.release()


def _watch(run: Run) -> None:
    """In a child: block until the owner's end of the pipe closes, then clean up and exit."""
    try:
        while os.read(run.read_fd, 1):
            pass
    except OSError:
        pass
    unlink(shm.name for shm in run.segments)
    os._exit(1)


def _in_child() -> None:
    run = _forking
    if run is None or threading.current_thread().name != START_THREAD or \
            os.getppid() != run.owner:
        return
    os.close(run.write_fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):   # the owner's handlers raise; ending is right
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORK_SIGNALS)
    threading.Thread(target=_watch, args=(run,), name="sim.lava owner watch",
                     daemon=True).start()


def install() -> None:
    """Put `_Segments` in Lava's message infrastructure and the fork hook in place (once; Lava
    must be loaded)."""
    global _installed
    with _lock:
        if _installed:
            return
        from lava.magma.runtime.message_infrastructure import multiprocessing as infra
        from lava.magma.runtime.message_infrastructure import shared_memory_manager as smm

        class RunSharedMemoryManager(smm.SharedMemoryManager):
            def __init__(self):
                self._shared_memory_handles = []
                self._manager = _Segments(_forking)

        infra.SharedMemoryManager = RunSharedMemoryManager
        os.register_at_fork(after_in_child=_in_child)
        _installed = True


class forking:
    """Context: `run`'s children are being forked in this thread (the guard's start thread,
    which does nothing else). The thread blocks FORK_SIGNALS, so a child inherits them blocked
    until `_in_child` has set its own handling: a Ctrl-C arriving between the fork and the hook
    cannot raise in the child. (The owner's main thread still receives them.)"""

    def __init__(self, run: Run):
        self.run = run

    def __enter__(self):
        global _forking
        signal.pthread_sigmask(signal.SIG_BLOCK, FORK_SIGNALS)
        _forking = self.run
        return self.run

    def __exit__(self, *exc):
        global _forking
        _forking = None
