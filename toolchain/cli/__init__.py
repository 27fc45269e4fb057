"""The `toolchain` command: one module per command (compile, run, inspect, targets, report,
export, rnn), and commands other installed packages contribute through the entry-point group
`sfn_toolchain.commands` (exporters adds `toolchain rnn train` that way).

Every user-caused failure is a ToolchainError printed as one line `error: …` with exit code 2;
`--debug` prints the traceback (and a failed Lava process's own) before it. Outputs are checked
before a command's work starts and written whole at its end (sim.files), so a failed command
leaves no file. Python warnings (numpy's RuntimeWarning among them) are not shown without
`--debug`: what the code handles is not news to the user, and what it does not is an error.
SIGTERM and SIGHUP end a command like Ctrl-C does — what it started is ended, what it was
writing removed — and then end the process by the same signal.
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
import warnings
from importlib.metadata import entry_points

import click

from toolchain.cli import compile as compile_
from toolchain.cli import example, export, inspect, report, rnn, run, targets
from toolchain.cli.common import print_error
from toolchain import __version__
from sim.errors import Terminated, raise_on_termination
from toolchain.errors import ToolchainError

PLUGIN_GROUP = "sfn_toolchain.commands"


class _Group(click.Group):
    def invoke(self, ctx):
        # `toolchain --debug CMD …` (the group's option) or `toolchain CMD … --debug`
        debug = bool(ctx.params.get("debug")) or "--debug" in ctx.args
        try:
            with warnings.catch_warnings(), raise_on_termination():
                if not debug:
                    warnings.simplefilter("ignore")
                return super().invoke(ctx)
        except ToolchainError as exc:
            if debug:
                traceback.print_exc()
                if getattr(exc, "lava_traceback", None):
                    print(f"the Lava process's traceback:\n{exc.lava_traceback}", file=sys.stderr)
            print_error("error:", exc)
            sys.exit(exc.exit_code)
        except Terminated as exc:
            sys.stdout.flush()
            signal.signal(exc.signum, signal.SIG_DFL)
            os.kill(os.getpid(), exc.signum)
            raise
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug, not a user error: say so, keep it short
            if debug:
                traceback.print_exc()
            print_error("internal error:", f"{type(exc).__name__}: {exc}" +
                        ("" if debug else " (re-run with --debug for the traceback)"))
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
