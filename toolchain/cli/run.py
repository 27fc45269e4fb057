"""`toolchain run`: an artifact on inputs, on sim.cpu or Lava."""
from __future__ import annotations

import json

import click
import numpy as np

import sim.cpu
import sim.lava
from sim.artifact import load
from sim.files import write_files
from toolchain.cli.common import check_outputs, console, load_input_npy, load_npy, npy_bytes
from toolchain.errors import InputFileError, SimulationError


@click.command()
@click.argument("artifact", type=click.Path())
@click.option("--input", "inp", required=True, type=click.Path(),
              help="X.npy, (N, *input_shape) float32.")
@click.option("--output", "out", required=True, type=click.Path(),
              help="Y.npy to write: what the ONNX model outputs (softmax included when it "
                   "ended in one).")
@click.option("--logits", type=click.Path(),
              help="Also write the readout before the model's final softmax (its logits).")
@click.option("--backend", type=click.Choice(["cpu", "lava"]), default="cpu", show_default=True)
@click.option("--timesteps", type=click.IntRange(1, 4096), help="Default: the artifact's.")
@click.option("--binary", is_flag=True, help="Binary spikes per step (rate coding) when T > 1.")
@click.option("--lava-tag", type=click.Choice(["fixed_pt", "floating_pt"]), default="fixed_pt",
              show_default=True)
@click.option("--lanes", type=click.IntRange(1), default=None,
              help="Lava backend: samples each Lava timestep carries side by side (trials for a "
                   "recurrent artifact). Default: 64 (1024 trials), capped so one message "
                   "stays under 1 MiB; outputs do not depend on it.")
@click.option("--timeout", type=click.FloatRange(1), default=600, show_default=True,
              help="Wall-clock guard for a Lava run, seconds.")
@click.option("--fail-on-saturation", is_flag=True,
              help="Treat any 24-bit state saturation, or any input the encoder clips to its "
                   "levels, as an error (no output is written).")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU backend: torch threads for the run (default: one for a small run, "
                   "else every core).")
@click.option("--labels", type=click.Path(),
              help="Y.npy of N integer class labels: print the top-1 accuracy of the run.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's summary (samples, "
              "SynOps, saturations, accuracy) as JSON, numbers as numbers.")
@click.option("--debug", is_flag=True, hidden=True)
def run(artifact, inp, out, logits, backend, timesteps, binary, lava_tag, lanes, timeout,
        fail_on_saturation, threads, labels, as_json, debug):
    """Run ARTIFACT on --input and write the readout to --output."""
    from tqdm import tqdm

    check_outputs({"--output": out, "--logits": logits},
                  {"artifact": artifact, "input": inp, "labels": labels})
    art = load(artifact)
    x, cast_note = load_input_npy(inp, "input")
    T = timesteps or int(art.meta.get("timesteps", 1))
    truth = _labels(labels, len(x)) if labels else None
    with tqdm(total=len(x), unit="sample", disable=None, leave=False) as bar:
        if backend == "cpu":
            res = sim.cpu.run(art, x, timesteps=T, binary=binary, progress=bar.update,
                              threads=threads)
        else:
            res = sim.lava.run(art, x, timesteps=T, binary=binary, tag=lava_tag,
                               timeout=timeout, progress=bar.update, lanes=lanes)
    if fail_on_saturation:
        check_saturation(res, art)
    softmax = art.node(art.output).softmax
    y = res.output                 # what the ONNX model outputs (sim.results.SimResult)
    clipped = res.stats[art.input].clipped
    summary = {"samples": res.samples, "timesteps": T, "backend": backend,
               "output": out, "logits": logits,
               "output_shape": list(np.shape(y)),   # (N, T_trial, n_out) for a recurrent model
               "softmax": softmax or None,
               "synops_per_sample": sum(s.synops for s in res.stats.values()) / max(res.samples, 1),
               "saturations": sum(s.saturations for s in res.stats.values()),
               "input_clipped": clipped, "notes": [cast_note] if cast_note else []}
    if truth is not None:
        if y.ndim != 2:
            raise InputFileError(f"--labels: the output has shape {y.shape}; top-1 accuracy "
                                 "needs one score vector per sample")
        summary["accuracy"] = float((y.argmax(1) == truth).mean())
    write_files([(out, npy_bytes(y))] + ([(logits, npy_bytes(res.logits))] if logits else []))
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        for note in summary["notes"]:
            console.print(f"note: {note}", highlight=False)
        runs = f"{res.samples} trials × {np.shape(y)[1]} steps" if art.recurrent else \
            f"{res.samples} samples × T={T}"
        console.print(f"{runs} on {backend} → {out} "
                      f"{tuple(summary['output_shape'])}; "
                      f"{summary['synops_per_sample']:,.0f} synaptic ops/sample, "
                      f"{summary['saturations']} saturations, {clipped} input values clipped",
                      highlight=False)
        if truth is not None:
            right = int((y.argmax(1) == truth).sum())
            console.print(f"accuracy {summary['accuracy']:.4f} ({right} of {len(truth)})",
                          highlight=False)


def check_saturation(res, art) -> None:
    """--fail-on-saturation: a SimulationError naming every layer whose 24-bit state saturated
    and the input if the encoder clipped any value, each with its count."""
    parts = [f"layer {name!r} saturated its 24-bit state {st.saturations} times"
             for name, st in res.stats.items() if st.saturations]
    clipped = res.stats[art.input].clipped
    if clipped:
        inp = art.node(art.input)
        parts.append(f"input {art.input!r} clipped {clipped} values to its levels "
                     f"[{inp.lo}, {inp.hi}] (inputs outside the calibrated range)")
    if parts:
        raise SimulationError("; ".join(parts) + f" over {res.samples} samples; recompile with "
                              "fewer --levels or a wider range (calibration data covering these "
                              "inputs)")


def _labels(path: str, n: int) -> np.ndarray:
    truth = load_npy(path, "labels")
    if truth.shape != (n,) or not np.issubdtype(truth.dtype, np.integer):
        raise InputFileError(f"{path}: labels of shape {truth.shape} and dtype {truth.dtype}; "
                             f"expected ({n},) integers, one per input sample")
    return truth
