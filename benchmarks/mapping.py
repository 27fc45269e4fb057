"""Mapping time and quality: cores used against the lower bound, on the digits CNN and on a
full-width ResNet-18-shaped network (synthetic SFN artifact: random 8-bit weights, CIFAR-style
3×3 stem at 32×32, stages of 64-128-256-512 channels, 1000-way head, 11.7 M weights), and with
--fc6 VGG-19's fc6 shape (a fan-in over a core, split into partial sums).

    .venv/bin/python benchmarks/mapping.py [--target loihi2] [--fc6]
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sim  # noqa: E402,F401  (before numpy: its BLAS kernels, see sim/__init__.py)

import numpy as np

from sim import ir
from sim.artifact import Artifact

ROOT = Path(__file__).resolve().parents[1]


def resnet18_artifact(classes: int = 1000, width: int = 64, size: int = 32,
                      seed: int = 0) -> Artifact:
    """A ResNet-18-shaped SFN graph: conv → neuron blocks, Add into the block's second neuron
    (identity or 1×1 stride-2 projection shortcut), global sum-pool, dense head, readout.
    Stages of width·(1, 2, 4, 8) channels on size×size inputs."""
    rng = np.random.default_rng(seed)
    nodes: list[ir.Node] = [ir.Input("input", (), (3, size, size), inv_scale=255.0, lo=0, hi=255)]

    def conv(name, src, c_in, c_out, hw, k, stride):
        weight = (rng.integers(-127, 128, (c_out, c_in, k, k)) * 2).astype(np.int16)
        pad = k // 2
        nodes.append(ir.Conv(name, (src,), (c_out, hw, hw), weight=weight, stride=(stride, stride),
                             pads=(pad, pad, pad, pad)))
        return name

    def neuron(name, src, c, hw):
        nodes.append(ir.Neuron(name, (src,), (c, hw, hw), threshold=np.full((c, 1, 1), 4096),
                               bias=np.zeros((c, 1, 1), np.int64), lo=0, hi=15))
        return name

    x = neuron("stem/relu", conv("stem/conv", "input", 3, width, size, 3, 1), width, size)
    c_in, hw = width, size
    for stage, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            out_hw = hw // stride
            p = f"layer{stage + 1}.{block}"
            h = neuron(f"{p}/relu1", conv(f"{p}/conv1", x, c_in, c, out_hw, 3, stride), c, out_hw)
            h = conv(f"{p}/conv2", h, c, c, out_hw, 3, 1)
            shortcut = conv(f"{p}/downsample", x, c_in, c, out_hw, 1, stride) \
                if stride != 1 or c_in != c else x
            nodes.append(ir.Add(f"{p}/add", (h, shortcut), (c, out_hw, out_hw),
                                gains=np.ones((2, c, 1, 1), np.int64), exps=(0, 0)))
            x = neuron(f"{p}/relu2", f"{p}/add", c, out_hw)
            c_in, hw = c, out_hw
    nodes.append(ir.SumPool("pool", (x,), (c_in, 1, 1), kernel=(hw, hw), stride=(hw, hw)))
    nodes.append(ir.Reshape("flatten", ("pool",), (c_in,)))
    weight = (rng.integers(-127, 128, (classes, c_in)) * 2).astype(np.int16)
    nodes.append(ir.Dense("fc", ("flatten",), (classes,), weight=weight))
    nodes.append(ir.Readout("fc/readout", ("fc",), (classes,), scale=np.ones(classes, np.float32),
                            bias=np.zeros(classes, np.int64)))
    art = Artifact(nodes, "input", "fc/readout", {"target": "loihi2"})
    art.validate()
    return art


def weight_count(art: Artifact) -> int:
    return sum(int(n.weight.size) for n in art.nodes if n.kind in ("dense", "conv"))


@functools.lru_cache(maxsize=None)
def digits_artifact() -> Artifact:
    """The bundled digits CNN (ReLU) compiled with its training split as calibration (cached)."""
    from exporters.digits import load_digits_split
    from toolchain.compiler import compile_onnx
    x_train = load_digits_split()[0]
    return compile_onnx(ROOT / "toolchain" / "data" / "digits_cnn_relu.onnx",
                        calib=x_train).artifact


def fc6_artifact(f_in: int = 25_088, f_out: int = 4_096, seed: int = 0) -> Artifact:
    """VGG-19's fc6 shape: one dense layer of 25,088 inputs (7×7×512) and 4,096 neurons, random
    nonzero 8-bit weights, then a 10-way readout: one neuron's synapses exceed a core."""
    w = np.random.default_rng(seed).integers(1, 128, (f_out, f_in), dtype=np.int16) * 2
    nodes = [ir.Input("input", (), (f_in,), inv_scale=1.0, lo=0, hi=15),
             ir.Dense("fc6", ("input",), (f_out,), weight=w),
             ir.Neuron("relu6", ("fc6",), (f_out,), threshold=np.full(f_out, 64),
                       bias=np.zeros(f_out, np.int64), lo=0, hi=15),
             ir.Dense("fc7", ("relu6",), (10,), weight=np.ones((10, f_out), np.int16)),
             ir.Readout("y", ("fc7",), (10,), scale=np.ones(10, np.float32),
                        bias=np.zeros(10, np.int64))]
    art = Artifact(nodes, "input", "y")
    art.validate()
    return art


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from toolchain.mapping import map_artifact
    from toolchain.target import load_target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="loihi2")
    parser.add_argument("--fc6", action="store_true", help="also VGG-19's fc6 shape (fan-in "
                        "split into partial sums; about 2 GB and a minute)")
    args = parser.parse_args()
    target = load_target(args.target)
    table = Table(title=f"mapping on {target.name}", title_justify="left")
    for col in ("network", "weights", "neurons", "lower bound (neurons / memory)", "cores used",
                "ratio", "chips", "mapping time"):
        table.add_column(col, justify="left" if col == "network" else "right")
    nets = [("digits CNN (relu)", digits_artifact), ("ResNet-18 shape", resnet18_artifact)]
    for name, build in nets + ([("VGG-19 fc6 shape", fc6_artifact)] if args.fc6 else []):
        art = build()
        start = time.perf_counter()
        placement = map_artifact(art, target)
        seconds = time.perf_counter() - start
        lb = placement.lower_bound
        table.add_row(name, f"{weight_count(art):,}", f"{lb['neurons']:,}",
                      f"{lb['cores']} ({lb['by_neurons']:.2f} / {lb['by_memory']:.2f})",
                      str(placement.cores_used), f"{placement.ratio:.3f}×", str(placement.chips),
                      f"{seconds:.2f} s")
    Console(width=None if sys.stdout.isatty() else 150).print(table)


if __name__ == "__main__":
    main()
