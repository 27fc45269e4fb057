import sys
from pathlib import Path

import pytest

# tests import their shared fixtures module `nets` from this folder
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _quiet_torch():
    import torch
    torch.set_num_threads(2)
