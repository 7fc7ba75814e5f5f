"""Plain-text (Markdown) tables for the benchmark output, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence

TITLE = "tasks-exporter benchmark"


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()) -> str:
    """A Markdown table with aligned columns, under a `### title`, followed by its notes."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [f"### {title}", "", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    out += [""] + [f"- {note}" for note in notes] if notes else []
    return "\n".join(out) + "\n"


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: {model}, {cores} cores; Python {platform.python_version()} "
            f"({sys.implementation.name}); {platform.system()} {platform.release()}")


def seconds(value: float | None, *, approx: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:,.0f}"
    return f">= {text}" if approx else text


def number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"
