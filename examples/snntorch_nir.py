"""snnTorch → NIR → SFN: train a LIF CNN on the digits with snnTorch, export it with snnTorch's
own NIR exporter, compile the NIR file like `toolchain compile model.nir` does, and compare the
accuracy of snnTorch's simulation with sim.cpu's (and Lava's) for several T (docs/nir.md).

    python examples/snntorch_nir.py                       # T = 8, 16, 32; 5 epochs each
    python examples/snntorch_nir.py --timesteps 16 --lava 120

Needs the interop extra (snntorch, nirtorch): pip install -e '.[interop]'.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import sim.cpu  # noqa: E402
import sim.lava  # noqa: E402
import snn_digits  # noqa: E402  (the model and its training, shared with tests/test_nir.py)
from toolchain.nir_io.importer import compile_nir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timesteps", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lava", type=int, default=0, help="also run the first N test samples on "
                    "Lava (fixed_pt) and check them against sim.cpu")
    args = ap.parse_args()
    print("| T | snnTorch accuracy | sim.cpu accuracy | difference (points) | top-1 agreement "
          "| Lava = sim.cpu |")
    print("|---|---|---|---|---|---|")
    for T in args.timesteps:
        net, snn_acc, x_train, x_test, y_test = snn_digits.train(T, args.epochs)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.nir"
            snn_digits.export(net, path)
            art = compile_nir(path, calib=x_train, timesteps=T).artifact
        cpu = sim.cpu.run(art, x_test, timesteps=T)
        import torch
        with torch.no_grad():
            counts = snn_digits.spike_counts(net, torch.from_numpy(x_test), T).numpy()
        acc = float((cpu.output.argmax(1) == y_test).mean())
        same = "—"
        if args.lava:
            lava = sim.lava.run(art, x_test[:args.lava], timesteps=T)
            same = str(bool(np.array_equal(lava.accumulator, cpu.accumulator[:args.lava])))
        print(f"| {T} | {100 * snn_acc:.2f}% | {100 * acc:.2f}% | {100 * (acc - snn_acc):+.2f} "
              f"| {100 * snn_digits.labels_agree(counts, cpu.output):.2f}% | {same} |",
              flush=True)


if __name__ == "__main__":
    main()
