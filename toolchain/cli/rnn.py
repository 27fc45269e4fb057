"""`toolchain rnn eval`: a deployed recurrent network scored on its task next to the float one.
(`toolchain rnn train` comes from exporters.rnn, through the `sfn_toolchain.commands` entry
point.)"""
from __future__ import annotations

import json

import click

from sim.artifact import load
from toolchain.cli.common import load_input_npy, load_npy
from toolchain.errors import ArtifactError
from toolchain.tasks import CLI_NAMES as TASKS


@click.group()
def rnn():
    """Train E/I RNNs (Dale's law) on cognitive tasks and evaluate their deployment."""


@rnn.command("eval")
@click.argument("artifact", type=click.Path())
@click.option("--task", type=click.Choice(sorted(TASKS)), help="Default: the model's own task.")
@click.option("--trials", type=click.Path(), help="Any task: trial inputs X.npy (N, T, n_in) "
              "(instead of --task).")
@click.option("--targets", type=click.Path(), help="With --trials: targets Y.npy (N, T, n_out).")
@click.option("--mask", type=click.Path(), help="With --trials: the steps scored, M.npy (N, T) or "
              "(T,); decisions are read over them (default: every step for R², the last step "
              "for decisions).")
@click.option("--include-calibration", is_flag=True, help="With --trials: also score the trials "
              "the artifact was calibrated on (left out by default).")
@click.option("--onnx", "onnx_path", type=click.Path(exists=True),
              help="The float ONNX (cell, cell graph or RNN-operator model), to report the float "
              "network beside the deployed one.")
@click.option("--backend", type=click.Choice(["cpu", "lava"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.option("--debug", is_flag=True, hidden=True)
def eval_(artifact, task, trials, targets, mask, include_calibration, onnx_path, backend,
          as_json, debug):
    """Masked R² and decision accuracy of a deployed RNN next to the float network, on a known
    task or on your own trials (--trials, --targets, --mask)."""
    art = load(artifact)
    info = art.meta.get("rnn")
    if not info:
        raise ArtifactError(f"{artifact}: not a compiled recurrent network")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    if trials or targets or mask or include_calibration:
        if task:
            raise click.UsageError("--task and --trials are alternatives; pass one")
        if not (trials and targets):
            raise click.UsageError("--trials and --targets go together")
        from toolchain.rnn.evaluate import evaluate_arrays
        x, _ = load_input_npy(trials, "trials", min_rows=1)
        y = load_npy(targets, "targets")
        m = load_npy(mask, "mask") if mask else None
        row = evaluate_arrays(art, x, y, m, onnx_path, backend, include_calibration)
        if as_json:
            click.echo(json.dumps(row, indent=1))
            return
        left = row["calibration_trials"]
        if include_calibration:
            what = f"all {row['trials']} trials of {trials}" + (
                f" (calibration trials among them: {_ranges(left)})" if left else "")
        elif left:
            what = (f"{row['trials']} of {row['trials_given']} trials of {trials}: "
                    f"{_ranges(row['used'])}; {_ranges(left)} were calibration trials, left out")
        else:
            what = f"all {row['trials']} trials of {trials} (none was a calibration trial)"
        click.echo(f"scored on {what}; decisions from the {row['decision']}")
        line = f"{row['trials']} trials on {backend}: deployed R² {fmt(row['deployed_r2'])}, " \
               f"accuracy {fmt(row['deployed_accuracy'])}"
        if onnx_path:
            line += f" | float R² {fmt(row['float_r2'])}, accuracy {fmt(row['float_accuracy'])}"
        click.echo(line)
        return
    name = TASKS[task] if task else info.get("task")
    if not name:
        raise click.UsageError("the artifact names no task; pass --task, or --trials and "
                               "--targets")
    if name not in TASKS.values():
        raise ArtifactError(f"{artifact}: its task {name!r} is none this toolchain knows "
                            f"({', '.join(sorted(TASKS.values()))}); pass --task")
    from toolchain.rnn.evaluate import evaluate   # onnxruntime and the RNN readers
    row = evaluate(art, name, onnx_path, backend)
    if as_json:
        click.echo(json.dumps(row, indent=1))
        return
    line = f"{row['task']}, {row['trials']} trials on {backend}: deployed R² " \
           f"{fmt(row['deployed_r2'])}, accuracy {fmt(row['deployed_accuracy'])}"
    if onnx_path:
        line += f" | float R² {fmt(row['float_r2'])}, accuracy {fmt(row['float_accuracy'])}"
    click.echo(line)


def _ranges(idx) -> str:
    """Trial indices as ranges: [0, 1, 2, 5] → '0–2, 5'."""
    out, idx = [], list(idx)
    i = 0
    while i < len(idx):
        j = i
        while j + 1 < len(idx) and idx[j + 1] == idx[j] + 1:
            j += 1
        out.append(str(idx[i]) if i == j else f"{idx[i]}–{idx[j]}")
        i = j + 1
    return "trials " + ", ".join(out) if out else "none"
