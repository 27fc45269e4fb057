"""A small model zoo in plain PyTorch (no torchvision): narrow versions of ResNet-18, MobileNetV2
and a DenseNet, written like the torchvision originals so their ONNX exports contain what a user's
standard export contains; plus helpers to export, train on digits and measure.

- `ResNet18(width)`: BasicBlocks (conv3×3-BN-ReLU-conv3×3-BN + identity or 1×1 stride-2
  projection shortcut, ReLU after the Add), stages of width·(1, 2, 4, 8) channels, two blocks each.
  `stem="small"`: conv3×3 + BN + ReLU + MaxPool(3, 2, 1) (digits at 16×16); `stem="cifar"`:
  conv3×3 without pooling (the 32×32 benchmark); `stem="imagenet"`: conv7×7/2 + MaxPool.
- `MobileNetV2(width)`: inverted residuals (1×1 expansion + BN + ReLU6, depthwise 3×3 + BN +
  ReLU6, linear 1×1 projection + BN, an Add with no activation after it when stride 1 and
  in = out), a last 1×1 conv + ReLU6, global average pool, dropout, linear.
- `DenseNet(growth)`: DenseNet-BC layers (concat of all earlier features → BN-ReLU-conv1×1 →
  BN-ReLU-conv3×3), two dense blocks joined by a transition (BN-ReLU-conv1×1-AvgPool2), final
  BN-ReLU, global average pool, linear.

The digits inputs are 8×8; `Upsampled(model)` puts `F.interpolate` (bilinear, ×2) in front for
training, and `digits(size)` returns the same upsampled arrays for evaluation and calibration.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- ResNet-18 ------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, width: int = 8, in_ch: int = 1, classes: int = 10, size: int = 16,
                 stem: str = "small"):
        super().__init__()
        self.input_shape = (in_ch, size, size)
        if stem == "imagenet":
            layers = [nn.Conv2d(in_ch, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        else:
            layers = [nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                      nn.ReLU(inplace=True)]
            if stem == "small":
                layers.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*layers)
        blocks, c_in = [], width
        for stage, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for b in range(2):
                blocks.append(BasicBlock(c_in, c, 2 if stage > 0 and b == 0 else 1))
                c_in = c
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- MobileNetV2 ----------------------------------------------------------------------------------


def conv_bn_relu6(c_in, c_out, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        layers = [] if expand == 1 else [conv_bn_relu6(c_in, hidden, 1)]
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),     # depthwise
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]  # linear
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s), as in the paper, narrowed
    SETTINGS = ((1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 3, 1), (6, 24, 2, 2))
    # the paper's (and torchvision's) full network: stem 32, these, last 1280
    STANDARD = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width: float = 1.0, in_ch: int = 1, classes: int = 10, size: int = 16,
                 last: int = 64, settings=None, stem: int = 8):
        super().__init__()
        self.input_shape = (in_ch, size, size)
        c_in = max(4, int(stem * width))
        layers = [conv_bn_relu6(in_ch, c_in, 3, 2)]
        for t, c, n, s in settings or self.SETTINGS:
            c_out = max(4, int(c * width))
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        layers.append(conv_bn_relu6(c_in, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --- ResNet-50 ------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """conv1×1-BN-ReLU, conv3×3 (stride)-BN-ReLU, conv1×1 (×4 channels)-BN, + identity or a 1×1
    projection, ReLU (torchvision's ResNet-50 block)."""

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        c_out = 4 * planes
        self.conv1, self.bn1 = nn.Conv2d(c_in, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    """The ResNet-50 shape: stem conv7×7/2 + MaxPool(3, 2, 1) (`stem="imagenet"`) or conv3×3
    (`"small"`), bottleneck stages (3, 4, 6, 3) of width·(1, 2, 4, 8) planes (×4 out), global
    average pool, linear. width 64 is the full network."""

    def __init__(self, width: int = 64, in_ch: int = 3, classes: int = 1000, size: int = 224,
                 stem: str = "imagenet"):
        super().__init__()
        self.input_shape = (in_ch, size, size)
        if stem == "imagenet":
            layers = [nn.Conv2d(in_ch, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        else:
            layers = [nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                      nn.ReLU(inplace=True)]
        c_in = width
        for stage, n in enumerate((3, 4, 6, 3)):
            planes = width * 2 ** stage
            for b in range(n):
                layers.append(Bottleneck(c_in, planes, 2 if stage > 0 and b == 0 else 1))
                c_in = 4 * planes
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.fc(torch.flatten(x, 1))


# --- DenseNet -------------------------------------------------------------------------------------


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, layers: int, c_in: int, growth: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(c_in + i * growth, growth) for i in range(layers))

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, growth: int = 6, block: tuple[int, ...] = (3, 3), init: int = 12,
                 in_ch: int = 1, classes: int = 10, size: int = 8):
        super().__init__()
        self.input_shape = (in_ch, size, size)
        layers = [nn.Conv2d(in_ch, init, 3, 1, 1, bias=False)]
        c = init
        for i, n in enumerate(block):
            layers.append(DenseBlock(n, c, growth))
            c += n * growth
            if i < len(block) - 1:   # transition: BN-ReLU-conv1×1-AvgPool
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                           nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --- registry, data, export -----------------------------------------------------------------------

EPOCHS = 8   # digits training: about 6-12 s per model on one thread

ZOO = {
    "resnet18": lambda: ResNet18(width=8, size=16),
    "mobilenetv2": lambda: MobileNetV2(width=1.0, size=16),
    "densenet": lambda: DenseNet(growth=6, size=8),
}

# real shapes at a small input (tests/test_real_networks.py) and full size (the benchmark)
REAL = {
    "mobilenetv2_full": lambda size=32: MobileNetV2(in_ch=3, classes=1000, size=size,
                                                    last=1280, settings=MobileNetV2.STANDARD,
                                                    stem=32),
    "resnet50_narrow": lambda size=32: ResNet50(width=16, size=size, stem="small"),
    "resnet50": lambda size=224: ResNet50(width=64, size=size),
}


def build(name: str, seed: int = 0, bn_stats: bool = True) -> nn.Module:
    """An untrained zoo model in eval mode; `bn_stats` gives its BatchNorms non-trivial running
    statistics and affine parameters (like a trained model's)."""
    torch.manual_seed(seed)
    model = ZOO[name]()
    if bn_stats:
        randomize_bn(model)
    return model.eval()


def randomize_bn(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def settle_batchnorm(model: nn.Module, input_shape: tuple, batches: int = 4,
                     batch: int = 32) -> nn.Module:
    """BatchNorm statistics as cumulative averages over `batches` batches of uniform [0, 1)
    inputs (training mode, no gradients); the model returned in eval mode."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand((batch,) + tuple(input_shape)))
    return model.eval()


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class Upsampled(nn.Module):
    """`model` behind F.interpolate: trains a 16×16 model on the 8×8 digits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.size = model, model.input_shape[-1]

    def forward(self, x):
        return self.model(upsample(x, self.size))


def digits(size: int = 8, split_seed: int = 0):
    """(x_train, y_train, x_test, y_test) of scikit-learn digits, images upsampled to size×size
    with the same F.interpolate the training used."""
    from exporters.digits import load_digits_split
    x_tr, y_tr, x_te, y_te = load_digits_split(split_seed)
    def up(a):
        with torch.no_grad():
            u = upsample(torch.from_numpy(a), size).numpy().astype(np.float64)
        # bilinear ×2 of pixel/16 values lies on a 1/64 grid up to float rounding: snap it, so
        # the compiler sees the grid and encodes the inputs losslessly
        return (np.round(u * 64) / 64).astype(np.float32) if size == 2 * a.shape[-1] else \
            u.astype(np.float32)
    return up(x_tr), y_tr, up(x_te), y_te


def export(model: nn.Module, path: Path, dynamo: bool = False) -> Path:
    """Legacy exporter at opset 17 or the torch.export-based one at opset 18, dynamic batch."""
    import contextlib
    import io
    import logging
    import warnings
    example = torch.randn((1,) + tuple(model.input_shape))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=18,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
        else:
            torch.onnx.export(model, example, str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def train(name: str, epochs: int, seed: int = 0, lr: float = 1e-2) -> tuple[nn.Module, float, float]:
    """Train zoo model `name` on digits (through `Upsampled` when it takes 16×16) with
    `exporters.digits.train_digits` (Adam, cosine lr, batch 32) on one thread; returns (model in
    eval mode, float test accuracy, seconds)."""
    from exporters.digits import train_digits
    threads = torch.get_num_threads()
    # one thread: these nets are a few hundred small ops per step, and a second thread only
    # waits on the shared cores (measured 0.03 s/step on one thread, 0.03-0.3 on two)
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = ZOO[name]()
        start = time.perf_counter()
        acc = train_digits(Upsampled(model), epochs, seed=seed, lr=lr)
        return model.eval(), acc, time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def accuracy_of(output: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(output).argmax(axis=1) == y).mean())


# trained models shipped in tests/data/ for the fast test: the ResNet-18 (176 k parameters, a
# 0.7 MB file) is trained by the test itself instead
SHIPPED = ("densenet", "mobilenetv2")


def write_data(out: Path = Path(__file__).parent / "data", epochs: int = EPOCHS, seed: int = 0):
    """Train the SHIPPED zoo models, export each (legacy exporter, opset 17) to
    out/zoo_<name>.onnx and record its float test accuracy in out/zoo_models.json."""
    import json
    out.mkdir(exist_ok=True)
    meta = {}
    for name in SHIPPED:
        model, acc, sec = train(name, epochs, seed)
        export(model, out / f"zoo_{name}.onnx", dynamo=False)
        meta[name] = {"size": model.input_shape[-1], "epochs": epochs, "seed": seed,
                      "float_accuracy": acc, "params": sum(p.numel() for p in model.parameters()),
                      "train_seconds": round(sec, 1)}
        print(name, meta[name], flush=True)
    (out / "zoo_models.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    import argparse
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    ap = argparse.ArgumentParser(description="train the zoo on digits and write tests/data/")
    ap.add_argument("--write-data", action="store_true")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args()
    if args.write_data:
        write_data(epochs=args.epochs)
