"""sim.cpu against onnxruntime (float and int8) and against SNN frameworks, same run.

    .venv/bin/python benchmarks/cpu_sim.py [--nets digits,mlp,resnet18,resnet18_q]
        [--batches 1,16,256] [--threads 1,2] [--rounds 6] [--runs 3] [--spiking-batch 256]
        [--timesteps 8] [--skip-spiking] [--skip-load] [--cache DIR]

Three tables, printed as markdown:

1. **Integer networks** (benchmarks/speed_nets.py: the digits CNN, an MLP 784-1024-1024-10, ResNet-18
   ×1 and ×¼ on 3×32×32): for every network, batch and thread count, sim.cpu (outputs only,
   `count=False`, on the engine its default picks, named in the table: the graph engine for a
   small run, else the program) against onnxruntime on the float model, on its int8 model in
   the QOperator format and in the QDQ format (`quantize_static`, per-channel weights).
   ResNet-18 ×1 runs the batches of `--resnet-batches` only (default 64, 256). The last
   column times a `sim.cpu.Session` held across calls (as the onnxruntime sessions are).
2. **Binary spikes, T steps** (`--timesteps`, default 8) on the digits CNN: sim.cpu
   (`binary=True`) against snnTorch, sinabs and SpikingJelly running the same layer shapes with
   integrate-and-fire neurons (reset by subtraction), per step. A framework that is not
   installed is skipped with a line saying so (`pip install .[bench]` adds snnTorch and sinabs;
   SpikingJelly needs torchvision and a newer torch than this project's pin).
3. **Under load**: a competing busy process (a one-thread numpy matmul loop) is started, the
   digits CNN at batch 256 and 16 runs with sim.cpu's default threads and with one thread, and
   the process is killed.

How it times: the machine is shared and its speed drifts from second to second, so the rows of a
table are timed in `--rounds` interleaved rounds of `--runs` runs each (after a warm-up call),
and a ratio is the median over rounds of the two rows' block medians, timed seconds apart
(quartiles in brackets). Wall time throughout; the one-thread rows also give the ratio of
process CPU time, which other processes on the machine disturb less. The load average before
and after is printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim  # noqa: E402,F401  (before numpy and torch: BLAS kernels, OpenMP wait policy)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import speed_nets as nets  # noqa: E402
import sim.cpu  # noqa: E402
from sim.cpu import torch_ops  # noqa: E402


def _session(path: Path, threads: int):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def timed_rounds(cases: dict, rounds: int, runs: int) -> dict:
    """{name: ([wall block medians], [cpu block medians])}, every case once per round."""
    out = {k: ([], []) for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            fn()
            wall, cpu = [], []
            for _ in range(runs):
                t, c = time.perf_counter(), time.process_time()
                fn()
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            out[name][0].append(statistics.median(wall))
            out[name][1].append(statistics.median(cpu))
            time.sleep(0.05)
    return out


def ratio(a: list, b: list) -> tuple[float, float, float]:
    r = sorted(x / y for x, y in zip(a, b))
    return statistics.median(r), r[len(r) // 4], r[(3 * len(r)) // 4]


def fmt(r) -> str:
    return f"{r[0]:.2f}× [{r[1]:.2f}–{r[2]:.2f}]"


def integer_table(args, folder: Path) -> None:
    print("\n### sim.cpu against onnxruntime (float, int8 QOperator, int8 QDQ)\n")
    print("| network | batch | threads | engine | sim.cpu ms | vs ORT float | "
          "vs ORT int8 QOperator | vs ORT int8 QDQ | CPU time vs ORT int8 QOperator | "
          "held Session vs ORT float |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.nets.split(","):
        art = nets.artifact(name, folder)
        paths = {"float": nets.onnx_path(name, folder),
                 "qop": nets.ort_int8(name, folder, "QOperator"),
                 "qdq": nets.ort_int8(name, folder, "QDQ")}
        batches = args.resnet_batches if name == "resnet18" else args.batches
        for batch in [int(b) for b in batches.split(",")]:
            x = nets.inputs(name, batch)
            for threads in [int(t) for t in args.threads.split(",")]:
                cases = {k: (lambda s=_session(p, threads): s.run(None, {"input": x}))
                         for k, p in paths.items()}
                cases["sim"] = lambda: sim.cpu.run(art, x, count=False, threads=threads)
                held = sim.cpu.Session(art, count=False, threads=threads)
                cases["held"] = lambda: held.run(x)
                heavy = name == "resnet18" and batch > 64
                got = timed_rounds(cases, max(3, args.rounds // 2) if heavy else args.rounds,
                                   2 if heavy else args.runs)
                sim_ms = 1000 * statistics.median(got["sim"][0])
                cpu = fmt(ratio(got["sim"][1], got["qop"][1])) if threads == 1 else "—"
                engine = sim.cpu.engine_for(art, x, count=False)
                print(f"| {nets.NETS[name]} | {batch} | {threads} | {engine} | {sim_ms:.2f} | "
                      f"{fmt(ratio(got['sim'][0], got['float'][0]))} | "
                      f"{fmt(ratio(got['sim'][0], got['qop'][0]))} | "
                      f"{fmt(ratio(got['sim'][0], got['qdq'][0]))} | {cpu} | "
                      f"{fmt(ratio(got['held'][0], got['float'][0]))} |", flush=True)


def _digits_module():
    """The digits CNN's layer shapes as a torch module: conv 1→16, conv 16→32, avg pool 2,
    conv 32→32, global average pool, linear 32→10 (random weights: the timing does not depend
    on them)."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    return [nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1),
            nn.Conv2d(32, 32, 3, padding=1), nn.Linear(32, 10)]


def _snntorch(x, timesteps):
    import snntorch as snn
    import torch
    c1, c2, c3, fc = _digits_module()
    n1, n2, n3 = (snn.Leaky(beta=1.0, threshold=0.5, reset_mechanism="subtract")
                  for _ in range(3))
    xt = torch.from_numpy(x)

    @torch.no_grad()
    def run():
        m1 = m2 = m3 = None
        m1, m2, m3 = n1.init_leaky(), n2.init_leaky(), n3.init_leaky()
        total = 0
        for _ in range(timesteps):
            s1, m1 = n1(c1(xt), m1)
            s2, m2 = n2(c2(s1), m2)
            s3, m3 = n3(c3(torch.nn.functional.avg_pool2d(s2, 2)), m3)
            total = total + fc(s3.mean((2, 3)))
        return total
    return run


def _sinabs(x, timesteps):
    import sinabs.layers as sl
    import torch
    from torch import nn
    c1, c2, c3, fc = _digits_module()
    b = len(x)
    net = nn.Sequential(c1, sl.IAFSqueeze(batch_size=b), c2, sl.IAFSqueeze(batch_size=b),
                        nn.AvgPool2d(2), c3, sl.IAFSqueeze(batch_size=b),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    xt = torch.from_numpy(np.repeat(x[:, None], timesteps, axis=1).reshape(-1, *x.shape[1:]))

    @torch.no_grad()
    def run():
        for m in net:
            if hasattr(m, "reset_states"):
                m.reset_states()
        return net(xt)
    return run


def _spikingjelly(x, timesteps):
    import torch
    from spikingjelly.activation_based import functional, layer, neuron
    from torch import nn
    c1, c2, c3, fc = _digits_module()
    net = nn.Sequential(layer.SeqToANNContainer(c1), neuron.IFNode(step_mode="m"),
                        layer.SeqToANNContainer(c2), neuron.IFNode(step_mode="m"),
                        layer.SeqToANNContainer(nn.AvgPool2d(2), c3),
                        neuron.IFNode(step_mode="m"),
                        layer.SeqToANNContainer(nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc))
    xt = torch.from_numpy(np.repeat(x[None], timesteps, axis=0))

    @torch.no_grad()
    def run():
        functional.reset_net(net)
        return net(xt)
    return run


def spiking_table(args) -> None:
    from exporters.digits import load_digits_split
    from toolchain.compiler import compile_onnx
    t = args.timesteps
    x_train = load_digits_split()[0]
    art = compile_onnx(nets.DIGITS, calib=x_train, timesteps=t).artifact
    x = nets.inputs("digits", args.spiking_batch)
    print(f"\n### Binary spikes, T = {t}, digits CNN, batch {len(x)}: time per step\n")
    print("| framework | threads | ms per step | sim.cpu vs it |")
    print("|---|---|---|---|")
    import torch
    peers, missing = {}, []
    for label, make in (("snnTorch", _snntorch), ("sinabs", _sinabs),
                        ("SpikingJelly", _spikingjelly)):
        try:
            peers[label] = make(x, t)
        except ImportError as exc:
            missing.append(f"{label} ({exc.name} not installed)")
    for threads in [int(k) for k in args.threads.split(",")]:
        cases = {"sim.cpu": lambda: sim.cpu.run(art, x, timesteps=t, binary=True, count=False,
                                                threads=threads)}
        for label, fn in peers.items():
            def run(fn=fn):
                before = torch.get_num_threads()
                torch.set_num_threads(threads)
                try:
                    return fn()
                finally:
                    torch.set_num_threads(before)
            cases[label] = run
        got = timed_rounds(cases, args.rounds, args.runs)
        for label in cases:
            ms = 1000 * statistics.median(got[label][0]) / t
            vs = "—" if label == "sim.cpu" else fmt(ratio(got["sim.cpu"][0], got[label][0]))
            print(f"| {label} | {threads} | {ms:.3f} | {vs} |", flush=True)
    for m in missing:
        print(f"\nskipped: {m}")


def load_table(args, folder: Path) -> None:
    art = nets.artifact("digits", folder)
    print("\n### Under load: one competing busy process (a one-thread numpy matmul loop)\n")
    print("| batch | sim.cpu default threads ms | threads=1 ms | default vs threads=1 |")
    print("|---|---|---|---|")
    busy = subprocess.Popen(
        [sys.executable, "-c", "import numpy as np\na = np.random.rand(400, 400)\n"
                               "while True:\n    a @ a"],
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    try:
        time.sleep(1.0)
        for batch in (256, 16):
            x = nets.inputs("digits", batch)
            got = timed_rounds({"default": lambda: sim.cpu.run(art, x, count=False),
                                "one": lambda: sim.cpu.run(art, x, count=False, threads=1)},
                               args.rounds, args.runs)
            print(f"| {batch} | {1000 * statistics.median(got['default'][0]):.2f} | "
                  f"{1000 * statistics.median(got['one'][0]):.2f} | "
                  f"{fmt(ratio(got['default'][0], got['one'][0]))} |", flush=True)
    finally:
        busy.kill()
        busy.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default="digits,mlp,resnet18_q,resnet18")
    ap.add_argument("--batches", default="1,16,256")
    ap.add_argument("--resnet-batches", default="64,256",
                    help="batches of ResNet-18 ×1 (its batch of 256 takes seconds a run)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row and round")
    ap.add_argument("--timesteps", type=int, default=8)
    ap.add_argument("--spiking-batch", type=int, default=256)
    ap.add_argument("--skip-integer", action="store_true")
    ap.add_argument("--skip-spiking", action="store_true")
    ap.add_argument("--skip-load", action="store_true")
    ap.add_argument("--cache", help="folder for the exported and compiled networks "
                                    "(default: a temporary one)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.cache or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if not args.skip_integer:
            integer_table(args, folder)
        if not args.skip_spiking:
            spiking_table(args)
        if not args.skip_load:
            load_table(args, folder)
    import torch
    classes = {0: "off", torch_ops.INT8_PAIRS: "u8·s8 pairs within int16",
               torch_ops.INT8_FULL: "full u8·s8"}
    print(f"\nsim.cpu: torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, int8 class "
          f"{classes[torch_ops.int8_limit()]}, fire in the int8 kernel "
          f"{'on' if torch_ops.fire_exact() else 'off'}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; onnxruntime {ort.__version__}")
    load_after = os.getloadavg()
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f} on "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
