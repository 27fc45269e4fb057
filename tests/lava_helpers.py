"""Helpers shared by the Lava tests: exact equality of results (tests/compare.py) and a scan for
Lava children."""
from __future__ import annotations

import os

from compare import assert_same  # noqa: F401  (the Lava tests take it from here)


def assert_failed_cleanly(info, elapsed: float, message: str, shm_names, guard: float = 60):
    """A failing process model: its message in the error and the Lava traceback, reported well
    before the guard, no Lava child left, none of the run's shared-memory segments left."""
    assert message in str(info.value)
    assert "injected failure" in info.value.lava_traceback
    # reported by the failure, not by the guard's clock: well before the guard even on a loaded
    # machine (a failure takes a few seconds to report; the guard is minutes)
    assert elapsed < guard / 2, f"failure took {elapsed:.1f} s to report (guard: {guard:.0f} s)"
    assert lava_children() == []
    assert shm_names and not [n for n in shm_names if os.path.exists(f"/dev/shm/{n}")]


def lava_children() -> list[str]:
    """Command lines of this process's live children, the multiprocessing resource tracker (a
    helper of Python's shared memory, not a Lava process) excepted."""
    me, found = str(os.getpid()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = f.read().rsplit(")", 1)[1].split()[1]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if parent == me and "resource_tracker" not in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found
