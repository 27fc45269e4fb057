"""The `toolchain` command: one module per command (compile, run, inspect, targets, report,
export, rnn), and commands other installed packages contribute through the entry-point group
`sfn_toolchain.commands` (exporters adds `toolchain rnn train` that way).

Every user-caused failure is a ToolchainError printed as one line `error: …` with exit code 2;
`--debug` prints the traceback instead. Output files are written atomically, so a failed command
leaves no partial file.
"""
from __future__ import annotations

import sys
import traceback
from importlib.metadata import entry_points

import click

from toolchain.cli import compile as compile_
from toolchain.cli import example, export, inspect, report, rnn, run, targets
from toolchain.cli.common import err_console
from toolchain import __version__
from toolchain.errors import ToolchainError

PLUGIN_GROUP = "sfn_toolchain.commands"


class _Group(click.Group):
    def invoke(self, ctx):
        debug = "--debug" in sys.argv
        try:
            return super().invoke(ctx)
        except ToolchainError as exc:
            if debug:
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug, not a user error: say so, keep it short
            if debug:
                traceback.print_exc()
            err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc} "
                              "(re-run with --debug for the traceback)", highlight=False,
                              soft_wrap=True)
            sys.exit(3)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="toolchain")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(debug):
    """SFN toolchain: ONNX → Scale-and-Fire spiking graphs → Loihi-style integers → simulators."""


def _register():
    for command in (compile_.compile, run.run, inspect.inspect, targets.targets, report.report,
                    rnn.rnn, example.example, export.export):
        main.add_command(command)
    for entry in entry_points(group=PLUGIN_GROUP):
        entry.load()(main)


_register()
