"""`toolchain targets`: the hardware targets and every constant they define, with its source."""
from __future__ import annotations

import json

import click

from toolchain.cli.common import console
from toolchain.energy import constants_table
from toolchain.target import list_targets, load_target


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print every target and constant "
              "(value, unit, certainty, source) as JSON.")
@click.option("--debug", is_flag=True, hidden=True)
def targets(as_json, debug):
    """List the hardware targets and every constant they define, with its source."""
    loaded = [load_target(name) for name in list_targets()]
    if as_json:
        click.echo(json.dumps([t.to_json() for t in loaded], indent=1))
        return
    for target in loaded:
        console.print(constants_table(target))
