"""Plain-text tables for the terminal (standard library only): every command prints its tables with this."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: Collection[int] = ()) -> str:
    """``header``, a dashed rule and ``rows``, columns padded to their widest cell (``right``: right-aligned)."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        cells = enumerate(zip(row, widths, strict=False))
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in cells).rstrip()

    return "\n".join([fmt(cells[0]), fmt(["-" * w for w in widths]), *map(fmt, cells[1:])])
