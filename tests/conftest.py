import sys
from pathlib import Path

import sim  # noqa: F401  (before numpy: BLAS kernel choice, see sim/__init__.py)

import pytest

# tests import their shared fixtures module `nets` from this folder
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _quiet_torch():
    import torch
    torch.set_num_threads(2)


@pytest.fixture
def shared_memory_names(monkeypatch):
    """Names of every shared-memory segment Lava creates during the test."""
    from sim.lava.compat import load_lava

    load_lava()
    from lava.magma.runtime.message_infrastructure import shared_memory_manager as smm

    names, create = [], smm.SharedMemoryManager.create_shared_memory

    def recording(self, size):
        handle = create(self, size)
        names.append(handle.name)
        return handle

    monkeypatch.setattr(smm.SharedMemoryManager, "create_shared_memory", recording)
    return names
