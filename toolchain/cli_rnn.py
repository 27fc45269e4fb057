"""`toolchain rnn train` and `toolchain rnn eval`: E/I recurrent networks on cognitive tasks."""
from __future__ import annotations

import json

import click
import numpy as np

TASKS = {"cddm": "cddm", "gonogo": "go_nogo", "memory": "memory_number"}


@click.group()
def rnn():
    """Train E/I RNNs (Dale's law) on cognitive tasks and evaluate their deployment."""


@rnn.command()
@click.option("--task", type=click.Choice(sorted(TASKS)), required=True)
@click.option("--activation", type=click.Choice(["relu", "sigmoid", "tanh"]), default="relu",
              show_default=True)
@click.option("--dale/--no-dale", default=True, show_default=True, help="Dale's law (80% E).")
@click.option("--units", type=click.IntRange(2, 4096), default=100, show_default=True)
@click.option("--steps", type=click.IntRange(1), help="Optimizer steps (default: per task).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="The cell ONNX.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--debug", is_flag=True, hidden=True)
def train(task, activation, dale, units, steps, seed, out, as_json, debug):
    """Train on TASK and export the one-step cell as ONNX (state as explicit input/output)."""
    import sys

    import torch

    from exporters.rnn.export import export_rnn_onnx
    from exporters.rnn.model import EIRNN
    from exporters.rnn.tasks import make_task
    from exporters.rnn.train import train as fit
    torch.set_num_threads(2)
    t = make_task(TASKS[task], seed=seed)
    model = EIRNN(t.n_inputs, t.n_outputs, n_units=units, activation=activation, dale=dale,
                  seed=seed)
    result = fit(model, t, steps=steps, seed=seed, progress=sys.stderr.isatty() and not as_json)
    export_rnn_onnx(model, out, task=t)
    summary = {"output": out, "task": TASKS[task], "activation": activation, "dale": dale,
               "units": units, "r2": result.r2, "accuracy": result.accuracy}
    click.echo(json.dumps(summary, indent=1) if as_json else
               f"{out}: {TASKS[task]}, {activation}, Dale {'on' if dale else 'off'}, {units} units"
               f" — masked R² {result.r2:.3f}, decision accuracy "
               f"{'n/a' if result.accuracy is None else f'{result.accuracy:.3f}'}")


def evaluate(art, task_name: str, onnx_path: str | None = None, backend: str = "cpu") -> dict:
    """Masked R² and decision accuracy of the deployed network (and of the float one)."""
    from exporters.rnn.tasks import decision, make_task
    from exporters.rnn.train import masked_r2
    task = make_task(task_name)
    if backend == "cpu":
        import sim.cpu
        out = sim.cpu.run(art, task.inputs).output
    else:
        import sim.lava
        out = sim.lava.run(art, task.inputs).output
    row = {"task": task.name, "trials": int(len(task.inputs)), "backend": backend,
           "deployed_r2": masked_r2(out, task.targets, task.mask),
           "deployed_accuracy": decision(out, task)}
    if onnx_path:
        import onnx

        from exporters.rnn.export import run_onnx_trials
        from toolchain import rnn as onnx_rnn
        model = onnx.load(onnx_path)
        if onnx_rnn.is_onnx_rnn(model):  # a model around the ONNX RNN operator
            float_out = onnx_rnn.onnx_rnn_trials(model, task.inputs,
                                                 onnx_rnn.read_onnx_rnn(model, str(onnx_path)))
        else:
            float_out, _ = run_onnx_trials(onnx_path, task.inputs)
        row.update(float_r2=masked_r2(float_out, task.targets, task.mask),
                   float_accuracy=decision(float_out, task),
                   output_rms_difference=float(np.sqrt(np.mean((out - float_out) ** 2))))
    return row


@rnn.command("eval")
@click.argument("artifact", type=click.Path())
@click.option("--task", type=click.Choice(sorted(TASKS)), help="Default: the model's own task.")
@click.option("--onnx", "onnx_path", type=click.Path(exists=True),
              help="The float ONNX (cell or RNN-operator model), to report the float network "
              "beside the deployed one.")
@click.option("--backend", type=click.Choice(["cpu", "lava"]), default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--debug", is_flag=True, hidden=True)
def eval_(artifact, task, onnx_path, backend, as_json, debug):
    """Masked R² and decision accuracy of a deployed RNN next to the float network."""
    from sim.artifact import load
    from toolchain.errors import ArtifactError
    art = load(artifact)
    info = art.meta.get("rnn")
    if not info:
        raise ArtifactError(f"{artifact}: not a compiled recurrent network")
    name = TASKS[task] if task else info.get("task")
    if not name:
        raise click.UsageError("the artifact names no task; pass --task")
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
