"""Real network structures through the default compiler: does each compile, how long, how much
memory, bit-exact against its integer reference, and how close to float.

    .venv/bin/python benchmarks/real_networks.py [--models resnet50,densenet121,...]
                                                 [--calib normal|uniform] [--samples 4]

Models: the onnx package's light zoo graphs (tests/light_zoo.py: AlexNet, DenseNet-121,
Inception-v1/v2, ResNet-50, ShuffleNet, SqueezeNet, VGG-19, ZFNet) with seeded He-normal weights
and BatchNorm statistics mean 0, variance 1, at 224×224, and MobileNetV2 (tests/zoo.py, the
paper's channels) at 224×224 with random weights and BatchNorm statistics. Each model compiles in
a fresh process with the defaults and 16 calibration samples (N(0, 1) by default); the table
gives the compile seconds and the process's peak RSS, whether sim.cpu equals onnxruntime on the
emitted integer reference (output and accumulator) on `--samples` fresh inputs, the per-sample
cosine (smallest) and relative RMS error of the logits (before any softmax) against the float
model, top-1 agreement, and the weight bits and exponents the quantizer chose. A refusal prints
its message.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet50", "densenet121", "shufflenet", "inception_v2", "squeezenet", "mobilenetv2",
          "inception_v1", "alexnet", "zfnet", "vgg19")


def _model_path(name: str, folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import onnx
    path = folder / f"{name}.onnx"
    if name == "mobilenetv2":
        import torch
        import zoo
        torch.manual_seed(0)
        model = zoo.randomize_bn(zoo.REAL["mobilenetv2_full"](224)).eval()
        return zoo.export(model, path, dynamo=False)
    import light_zoo
    onnx.save(light_zoo.model(name), str(path))
    return path


def measure(name: str, calib_kind: str, samples: int, folder: Path) -> dict:
    """Compile and evaluate one model in this process."""
    import sim  # noqa: F401  (first: numpy's BLAS kernels)
    import numpy as np
    import onnxruntime as ort

    import sim.cpu
    from toolchain import calibrate as cal
    from toolchain.compiler import compile_onnx
    from toolchain.errors import ToolchainError
    from toolchain.reference import emit_reference

    path = _model_path(name, folder)
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    shape = tuple(d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim)[1:]
    rng = np.random.default_rng(0)
    if calib_kind == "normal":
        calib = rng.standard_normal((16,) + shape).astype(np.float32)
        x = rng.standard_normal((samples,) + shape).astype(np.float32)
    else:
        calib = rng.uniform(0, 1, (16,) + shape).astype(np.float32)
        x = rng.uniform(0, 1, (samples,) + shape).astype(np.float32)
    row = {"model": name}
    start = time.perf_counter()
    try:
        compiled = compile_onnx(path, calib=calib)
    except ToolchainError as exc:
        row.update(compiles=False, error=str(exc).replace(str(path), name)[:300])
        return row
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    art = compiled.artifact
    res = sim.cpu.run(art, x)
    sess = ort.InferenceSession(emit_reference(art).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    out, acc = sess.run(["output", "accumulator"], {"input": x})
    row["bit_exact"] = bool(np.array_equal(out, res.output) and
                            np.array_equal(acc, res.accumulator.astype(np.float32)))
    logits_name = compiled.imported.graph.output      # the float tensor before any softmax
    fl = np.concatenate([batch[logits_name] for batch in
                         cal.run_float(compiled.imported.source, x, [logits_name])])
    a, b = res.logits.reshape(len(x), -1), fl.reshape(len(x), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    rows = [r for r in compiled.layers if r.weight_bits is not None]
    row.update(compiles=True, cosine_min=round(float(cos.min()), 5),
               rel_rms=round(float(np.sqrt(((a - b) ** 2).mean() / (b ** 2).mean())), 4),
               top1=float((a.argmax(1) == b.argmax(1)).mean()),
               weight_bits=[min(r.weight_bits for r in rows),
                            int(np.median([r.weight_bits for r in rows]))],
               weight_exp=[min(r.weight_exp for r in rows), max(r.weight_exp for r in rows)],
               cores=art.meta["placement"]["cores_used"])
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--calib", choices=("normal", "uniform"), default="normal")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.calib, args.samples, Path(args.folder))))
        return
    import tempfile
    print(f"calibration {args.calib}, 16 samples; {args.samples} evaluation samples")
    print("| model | compiles | seconds | peak RSS MB | bit-exact | cosine (min) | rel. RMS | "
          "top-1 | weight bits min/median | exponents | cores |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            done = subprocess.run([sys.executable, __file__, "--one", name, "--calib",
                                   args.calib, "--samples", str(args.samples), "--folder",
                                   folder], capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                print(f"| {name} | crashed: {done.stderr.strip().splitlines()[-1][:120]} |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            if not r["compiles"]:
                print(f"| {name} | refused: {r['error']} |")
                continue
            print(f"| {name} | yes | {r['seconds']} | {r['peak_rss_mb']} | "
                  f"{'yes' if r['bit_exact'] else 'NO'} | {r['cosine_min']} | {r['rel_rms']} | "
                  f"{r['top1']:.2f} | {r['weight_bits'][0]}/{r['weight_bits'][1]} | "
                  f"{r['weight_exp'][0]}…{r['weight_exp'][1]} | {r['cores']} |", flush=True)


if __name__ == "__main__":
    main()
