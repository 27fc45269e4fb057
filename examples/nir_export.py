"""The digits CNN exported to NIR and run by an independent consumer (nirtorch's interpreter, an
IF written from NIR's equations) three ways: honouring the node metadata (bit-exact to sim.cpu's
binary run), starting at 0, and NIR's IF literally; prints the top-1 agreement with sim.cpu for
several T (the table of docs/nir.md).

    python examples/nir_export.py                 # T = 4, 8, 16, 32

Needs the interop extra (nirtorch): pip install -e '.[interop]'.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import nir  # noqa: E402

import sim.cpu  # noqa: E402
import toolchain  # noqa: E402
from nir_consumer import run_consumer  # noqa: E402  (tests/nir_consumer.py)
from toolchain.nir_io.export import export_nir  # noqa: E402


def main() -> None:
    x_calib, _, x_test, _ = toolchain.examples.load_digits_split()
    art = toolchain.compile(toolchain.examples.DIGITS_CNN, calib=x_calib)
    print("| T | metadata honoured | start at 0, reset by subtraction | NIR's IF literally |")
    print("|---|---|---|---|")
    for T in (4, 8, 16, 32):
        with tempfile.TemporaryDirectory() as tmp:
            export_nir(art, Path(tmp) / "d.nir", T)
            graph = nir.read(str(Path(tmp) / "d.nir"))
        ref = sim.cpu.run(art, x_test, timesteps=T, binary=True).output
        cells = []
        for reading in ("metadata", "start 0", "nir"):
            y, _ = run_consumer(graph, x_test, reading)
            cells.append("bit-exact" if np.array_equal(y, ref) else
                         f"{100 * np.mean(y.argmax(1) == ref.argmax(1)):.1f}%")
        print(f"| {T} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
