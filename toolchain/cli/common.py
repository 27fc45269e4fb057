"""What the commands share: the consoles, reading and writing user .npy files, the outputs'
checks, the tables.

The consoles read no markup and no emoji codes: every string printed through them — paths,
layer and tensor names, notes, error messages, table cells and titles — is shown as it is
(rich would otherwise read `[red]` or `[/]` in a user's file name as a style tag, drop it or
fail on it). Styles are given as `rich.text.Text` spans, never inside a string.
"""
from __future__ import annotations

import io
import os
import sys
import time

import click
import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sim.files import check_output, describe_missing, same_file
from sim.results import as_float32
from toolchain.errors import InputFileError, OutputFileError
from toolchain.npyio import load_user_npy
from toolchain.tables import columns, fitted, short

console = Console(width=None if sys.stdout.isatty() else 150,   # tables.width() agrees
                  markup=False, emoji=False)
err_console = Console(stderr=True, markup=False, emoji=False, highlight=False, soft_wrap=True)


class Progress:
    """Stage lines on stderr ("compile: calibrate (2.1 s)"), printed when stderr is a terminal
    or `--progress` asks for them, never into stdout (which may be JSON)."""

    def __init__(self, command: str, enabled: bool | None):
        self.command = command
        self.enabled = err_console.is_terminal if enabled is None else enabled
        self.start = time.monotonic()

    def __call__(self, stage: str) -> None:
        if self.enabled:
            err_console.print(f"{self.command}: {stage} ({time.monotonic() - self.start:.1f} s)",
                              style="dim")


def progress_option(fn):
    return click.option("--progress/--no-progress", "show_progress", default=None,
                        help="Stage lines on stderr (default: when stderr is a terminal).")(fn)


def print_error(label: str, message: str) -> None:
    """`label message` as one line on stderr, the label in bold red (the message's own line
    breaks become spaces)."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    err_console.print(Text.assemble((label, "bold red"), " ", line))


def check_outputs(outputs: dict, inputs: dict) -> None:
    """Before a command's work: each output ({option: path or None}) can be written and is
    neither one of the `inputs` ({what: path or None}) nor another output."""
    given = [(option, path) for option, path in outputs.items() if path is not None]
    for k, (option, path) in enumerate(given):
        check_output(path, inputs)
        for other_option, other in given[:k]:
            if same_file(path, other):
                raise OutputFileError(f"{option} and {other_option} both name {path}; give "
                                      "each output its own file")


def load_npy(path: str, what: str, min_rows: int = 0) -> np.ndarray:
    """A user's `.npy` file (toolchain.npyio.load_user_npy: header first, never unpickled); a
    path that is not a regular file says what it is (missing, a folder, a FIFO, a device) and is
    never opened."""
    if not os.path.isfile(path):
        raise InputFileError(describe_missing(path, f"{what} file"))
    return load_user_npy(path, what, min_rows=min_rows)


def load_input_npy(path: str, what: str, min_rows: int = 0) -> tuple[np.ndarray, str | None]:
    """A user's input samples as float32 (sim.results.as_float32) and the note to print when
    they were cast from another float dtype."""
    return as_float32(load_npy(path, what, min_rows), path)


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy file of `array` (written with sim.files.write_files once the command is done)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _fmt_range(r):
    return "" if r is None else (f"{r[0]}" if r[0] == r[1] else f"{r[0]}–{r[1]}")


def layer_table(rows: list[dict], title: str) -> Table:
    t = columns(Table(title=title, title_justify="left"),
                [("layer", "name"), ("op", "text"), ("shape", "text"), ("neurons", "number"),
                 ("synapses", "number"), ("levels / weights", "text"), ("threshold", "text"),
                 ("margin (bits)", "number")])
    for r in rows:
        t.add_row(short(r.name), r.op, "×".join(map(str, r.shape)),
                  f"{r.neurons:,}" if r.neurons else "", f"{r.synapses:,}" if r.synapses else "",
                  r.levels_text(), _fmt_range(r.threshold),
                  "" if r.margin_bits is None else f"{r.margin_bits}")
    return fitted(t)


def scale_table(found: dict) -> Table:
    """The λ scale search curve (toolchain.scale_search), the chosen row marked."""
    t = Table(title=f"scale search on {found['samples']} calibration samples: {found['rule']} "
                    f"(tolerance {found['tolerance']:g}, error factor {found['error_factor']:g})",
              title_justify="left")
    columns(t, [("λ", "number"), ("SynOps / inference", "number"), ("top-1 agreement", "number"),
                ("rel. RMS error", "number"), ("chosen", "long")])
    for p in found["curve"]:
        if "error" in p:
            t.add_row(f"{p['lambda']:g}", "", "", "", f"not quantizable: {p['error'][:60]}")
            continue
        top1 = f"{100 * p['top1_agreement']:.2f}%" if "top1_agreement" in p else "—"
        t.add_row(f"{p['lambda']:g}", f"{p['synops']:,.0f}", top1, f"{p['rel_rms_error']:.4f}",
                  "◀" if p["chosen"] else "")
    return fitted(t)


