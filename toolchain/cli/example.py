"""`toolchain example NAME --out DIR`: a bundled model and its data, ready for the quick start."""
from __future__ import annotations

import click

from toolchain.cli.common import console
from toolchain.examples import write_digits


@click.command()
@click.argument("name", type=click.Choice(["digits"]))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write into (created if missing).")
@click.option("--debug", is_flag=True, hidden=True)
def example(name, out_dir, debug):
    """Write an example model and its data: digits → digits_cnn.onnx, calib.npy (1,437 training
    images), x_test.npy (360 test images), y_test.npy (their labels)."""
    paths = write_digits(out_dir)
    for role, path in paths.items():
        console.print(f"{role}: {path}", highlight=False)
