"""`toolchain rnn eval`: a deployed recurrent network scored on its task next to the float one.
(`toolchain rnn train` comes from exporters.rnn, through the `sfn_toolchain.commands` entry
point.)"""
from __future__ import annotations

import json

import click

from sim.artifact import load
from toolchain.errors import ArtifactError
from toolchain.tasks import CLI_NAMES as TASKS


@click.group()
def rnn():
    """Train E/I RNNs (Dale's law) on cognitive tasks and evaluate their deployment."""


@rnn.command("eval")
@click.argument("artifact", type=click.Path())
@click.option("--task", type=click.Choice(sorted(TASKS)), help="Default: the model's own task.")
@click.option("--onnx", "onnx_path", type=click.Path(exists=True),
              help="The float ONNX (cell or RNN-operator model), to report the float network "
              "beside the deployed one.")
@click.option("--backend", type=click.Choice(["cpu", "lava"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
@click.option("--debug", is_flag=True, hidden=True)
def eval_(artifact, task, onnx_path, backend, as_json, debug):
    """Masked R² and decision accuracy of a deployed RNN next to the float network."""
    art = load(artifact)
    info = art.meta.get("rnn")
    if not info:
        raise ArtifactError(f"{artifact}: not a compiled recurrent network")
    name = TASKS[task] if task else info.get("task")
    if not name:
        raise click.UsageError("the artifact names no task; pass --task")
    if name not in TASKS.values():
        raise ArtifactError(f"{artifact}: its task {name!r} is none this toolchain knows "
                            f"({', '.join(sorted(TASKS.values()))}); pass --task")
    from toolchain.rnn.evaluate import evaluate   # onnxruntime and the RNN readers
    row = evaluate(art, name, onnx_path, backend)
    if as_json:
        click.echo(json.dumps(row, indent=1))
        return
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"
    line = f"{row['task']}, {row['trials']} trials on {backend}: deployed R² " \
           f"{fmt(row['deployed_r2'])}, accuracy {fmt(row['deployed_accuracy'])}"
    if onnx_path:
        line += f" | float R² {fmt(row['float_r2'])}, accuracy {fmt(row['float_accuracy'])}"
    click.echo(line)
