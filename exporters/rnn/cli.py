"""`toolchain rnn train`, contributed to the toolchain's CLI through the entry point
`sfn_toolchain.commands` (pyproject.toml): training needs torch and this package."""
from __future__ import annotations

import json

import click

from toolchain.tasks import CLI_NAMES as TASKS
from toolchain.tasks import load_task_module, make_task


@click.command()
@click.option("--task", type=click.Choice(sorted(TASKS)),
              help="A built-in task (or --task-module).")
@click.option("--task-module", "task_module", metavar="MODULE:FN",
              help="Your own task: a function in an importable module or a FILE.py that returns "
              "toolchain.tasks.custom_task(inputs, targets, mask) or those arrays (called with "
              "seed= when it takes one).")
@click.option("--activation", type=click.Choice(["relu", "sigmoid", "tanh"]), default="relu",
              show_default=True)
@click.option("--dale/--no-dale", default=True, show_default=True, help="Dale's law (80% E).")
@click.option("--units", type=click.IntRange(2, 4096), default=100, show_default=True)
@click.option("--steps", type=click.IntRange(1), help="Optimizer steps (default: per task).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", "out", required=True, type=click.Path(), help="The cell ONNX.")
@click.option("--json", "as_json", is_flag=True, help="Print the training summary as JSON.")
@click.option("--debug", is_flag=True, hidden=True)
def train(task, task_module, activation, dale, units, steps, seed, out, as_json, debug):
    """Train on a task and export the one-step cell as ONNX (state as explicit input/output)."""
    import sys

    import torch

    from sim.errors import InputFileError
    from sim.files import check_output
    from exporters.rnn.export import export_rnn_onnx
    from exporters.rnn.model import EIRNN
    from exporters.rnn.train import train as fit
    if (task is None) == (task_module is None):
        raise click.UsageError("give one of --task and --task-module")
    check_output(out)   # before the training, not after it
    torch.set_num_threads(2)
    if task_module:
        try:
            t = load_task_module(task_module, seed)
        except ValueError as exc:
            raise InputFileError(str(exc)) from None
    else:
        t = make_task(TASKS[task], seed=seed)
    model = EIRNN(t.n_inputs, t.n_outputs, n_units=units, activation=activation, dale=dale,
                  seed=seed)
    result = fit(model, t, steps=steps, seed=seed, progress=sys.stderr.isatty() and not as_json)
    export_rnn_onnx(model, out, task=t)
    summary = {"output": out, "task": t.name, "activation": activation, "dale": dale,
               "units": units, "r2": result.r2, "accuracy": result.accuracy}
    click.echo(json.dumps(summary, indent=1) if as_json else
               f"{out}: {t.name}, {activation}, Dale {'on' if dale else 'off'}, {units} units"
               f" — masked R² {result.r2:.3f}, decision accuracy "
               f"{'n/a' if result.accuracy is None else f'{result.accuracy:.3f}'}")


def register(main: click.Group) -> None:
    """Add `train` to the toolchain's `rnn` command group."""
    main.commands["rnn"].add_command(train)
