"""What the commands share: the consoles, reading and writing user .npy files, the tables."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from sim.artifact import atomic_write
from toolchain.errors import InputFileError

console = Console(width=None if sys.stdout.isatty() else 150)
err_console = Console(stderr=True)


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
    t = Table(title=title, title_justify="left")
    for col in ("layer", "op", "shape", "neurons", "synapses", "levels / weights", "threshold",
                "margin (bits)"):
        t.add_column(col, justify="right" if col in ("neurons", "synapses", "margin (bits)")
                     else "left")
    for r in rows:
        t.add_row(r.name[-40:], r.op, "×".join(map(str, r.shape)),
                  f"{r.neurons:,}" if r.neurons else "", f"{r.synapses:,}" if r.synapses else "",
                  r.levels_text(), _fmt_range(r.threshold),
                  "" if r.margin_bits is None else f"{r.margin_bits}")
    return t


def scale_table(found: dict) -> Table:
    """The λ scale search curve (toolchain.scale_search), the chosen row marked."""
    t = Table(title=f"scale search on {found['samples']} calibration samples: {found['rule']} "
                    f"(tolerance {found['tolerance']:g}, error factor {found['error_factor']:g})",
              title_justify="left")
    for col in ("λ", "SynOps / inference", "top-1 agreement", "rel. RMS error", "chosen"):
        t.add_column(col, justify="left" if col == "chosen" else "right")
    for p in found["curve"]:
        if "error" in p:
            t.add_row(f"{p['lambda']:g}", "", "", "", f"not quantizable: {p['error'][:60]}")
            continue
        top1 = f"{100 * p['top1_agreement']:.2f}%" if "top1_agreement" in p else "—"
        t.add_row(f"{p['lambda']:g}", f"{p['synops']:,.0f}", top1, f"{p['rel_rms_error']:.4f}",
                  "◀" if p["chosen"] else "")
    return t


