"""Columns of the CLI's tables: numbers are never wrapped or cut — a narrow terminal folds the
names, the headers and free text instead — and long names keep their end and lose their start to
"…"."""
from __future__ import annotations

import shutil
import sys

from rich.table import Table

NAME_WIDTH = 40   # longer names are shortened from the left
NAME_MIN = 10     # a name column keeps at least this many characters per line


def short(name: str, width: int = NAME_WIDTH) -> str:
    """`name` shortened from the left with "…" (its end tells layers apart)."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def columns(t: Table, spec: list[tuple[str, str]]) -> Table:
    """Add columns by kind: "name" (folds), "number" (right-aligned, kept whole), "text" (short
    words, wrapped only between words), "long" (free text that folds); `fitted` sets the widths
    once the rows are in."""
    for header, kind in spec:
        if kind == "number":
            column = t.add_column(header, justify="right")
        elif kind == "text":
            column = t.add_column(header, overflow="fold")
        else:
            column = t.add_column(header, overflow="fold",
                                  min_width=NAME_MIN if kind == "name" else None)
        t.columns[-1].meta = {"kind": kind}
        del column
    return t


def width() -> int:
    """The width the CLI prints at: the terminal's, or 150 columns when stdout is not one."""
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else 150


def fitted(t: Table, total: int | None = None) -> Table:
    """Fix the column widths for a `total`-column screen (default `width()`): every number and
    text column as wide as its widest cell and its header while there is room; when there is
    not, headers wrap first (to their longest word), then text columns (to their longest word);
    the name and free-text columns share the rest (at least NAME_MIN each) and fold — so a
    number is never cut ("1,757,…")."""
    total = width() if total is None else total
    kinds = [getattr(c, "meta", {}).get("kind") for c in t.columns]
    cells = [[str(x) for x in c._cells] for c in t.columns]
    header_word = [max([len(w) for w in str(c.header).split()] + [1]) for c in t.columns]
    widest = [max([len(x) for x in cs] + [1]) for cs in cells]
    longest_word = [max([len(w) for x in cs for w in x.split()] + [1]) for cs in cells]
    overhead = t._extra_width + sum(t._get_padding_width(i) for i in range(len(t.columns)))
    flexible = [i for i, k in enumerate(kinds) if k not in ("number", "text")]
    fixed = [i for i, k in enumerate(kinds) if k in ("number", "text")]
    header = [len(str(c.header)) for c in t.columns]
    widths = {i: max(widest[i], header[i]) for i in fixed}     # whole headers while they fit
    # what gives way first when they do not: header lines, then text columns' words
    for narrower in ([max(widest[i], header_word[i]) for i in range(len(kinds))],
                     [max(longest_word[i], header_word[i]) if kinds[i] == "text" else
                      max(widest[i], header_word[i]) for i in range(len(kinds))]):
        for i in fixed:
            if total - overhead - sum(widths.values()) >= NAME_MIN * len(flexible):
                break
            widths[i] = min(widths[i], narrower[i])
    room = total - overhead - sum(widths.values())
    for n, i in enumerate(sorted(flexible, key=lambda j: widest[j])):
        want = max(widest[i], header_word[i])
        widths[i] = max(NAME_MIN, min(want, room // (len(flexible) - n)))
        room -= widths[i]
    for i, column in enumerate(t.columns):
        column.width = widths[i]
    return t
