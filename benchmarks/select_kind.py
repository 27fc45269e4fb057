"""sim.cpu's fast form of the select kind against the kind's own int64 evaluation, on a decoder
with a transposed convolution and bilinear and nearest upsampling (selects on 16×16×16 to
8×64×64 maps), 256 samples, counting off; both forms give the same integers.

    .venv/bin/python benchmarks/select_kind.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sim  # noqa: E402,F401  (before numpy: its BLAS kernels, see sim/__init__.py)

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import sim.cpu
from sim.cpu import program
from toolchain.compiler import compile_onnx


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.t1 = nn.ConvTranspose2d(8, 16, 4, stride=2, padding=1)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.c1(torch.relu(self.t1(x))))           # 16 × 16 × 16
        x = F.interpolate(x, scale_factor=2, mode="bilinear")      # 16 × 32 × 32
        x = F.interpolate(torch.relu(self.c2(x)), scale_factor=2, mode="nearest")   # 8 × 64 × 64
        return self.c3(x).mean(dim=(2, 3))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = np.random.default_rng(0).random((256, 8, 8, 8)).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "decoder.onnx"
        torch.onnx.export(Decoder().eval(), torch.zeros(1, 8, 8, 8), str(path), dynamo=False,
                          opset_version=17, input_names=["input"],
                          dynamic_axes={"input": {0: "batch"}})
        art = compile_onnx(path, calib=x[:64]).artifact
    fast = program.BUILDERS["select"]
    times, outs = {"int64 evaluate": [], "fast form": []}, {}
    for _ in range(args.repeats):
        for label in times:
            if label == "fast form":
                program.BUILDERS["select"] = fast
            else:
                program.BUILDERS.pop("select")
            program.PROGRAMS.clear()
            sim.cpu.run(art, x[:16])
            t = time.perf_counter()
            outs[label] = sim.cpu.run(art, x, count=False).accumulator
            times[label].append(time.perf_counter() - t)
    program.BUILDERS["select"] = fast
    assert np.array_equal(*outs.values())
    print(f"selects: {sum(n.kind == 'select' for n in art.nodes)}, samples: {len(x)}")
    for label, t in times.items():
        print(f"{label:15s} median {np.median(t):.3f} s  ({', '.join(f'{v:.3f}' for v in t)})")


if __name__ == "__main__":
    main()
