"""What the commands share: the consoles, reading and writing user .npy files, the tables."""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from sim.artifact import atomic_write
from toolchain.errors import InputFileError
from toolchain.tables import columns, fitted, short

console = Console(width=None if sys.stdout.isatty() else 150)   # tables.width() agrees
err_console = Console(stderr=True)


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
                              highlight=False, markup=False, style="dim", soft_wrap=True)


def progress_option(fn):
    return click.option("--progress/--no-progress", "show_progress", default=None,
                        help="Stage lines on stderr (default: when stderr is a terminal).")(fn)


def load_npy(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{path}: no such {what} file")
    try:
        array = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputFileError(f"{path}: not a readable .npy array ({str(exc)[:200]})") from None
    if not isinstance(array, np.ndarray):  # np.load opens an .npz archive as an NpzFile
        array.close()
        raise InputFileError(f"{path}: an .npz archive; give one .npy array")
    if array.ndim == 0:
        raise InputFileError(f"{path}: a 0-d array; give (N, *input_shape)")
    return array


def save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write(path, buf.getvalue())


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


