"""`toolchain run --backend lava` through the CLI equals the CPU backend (tqdm's multiprocessing
lock exists before Lava is imported, which used to crash Lava's import)."""
import numpy as np
import pytest
from click.testing import CliRunner

import nets
from toolchain.cli import main


@pytest.mark.lava
def test_cli_lava_equals_cpu(tmp_path):
    compiled, calib, test = nets.compiled("maxpool_cnn")
    compiled.save(tmp_path / "m.sfn")
    np.save(tmp_path / "x.npy", test[:40])
    for backend in ("cpu", "lava"):
        r = CliRunner().invoke(main, ["run", str(tmp_path / "m.sfn"), "--input",
                                      str(tmp_path / "x.npy"), "--output",
                                      str(tmp_path / f"{backend}.npy"), "--backend", backend,
                                      "--timeout", "120"])
        assert r.exit_code == 0, r.output
    cpu, lava = np.load(tmp_path / "cpu.npy"), np.load(tmp_path / "lava.npy")
    assert cpu.shape == (40, 6) and np.array_equal(cpu, lava)
