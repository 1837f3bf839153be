"""Helpers shared by the benchmarks: markdown tables and JSON output (metrics live in unitok.metrics)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["markdown_table", "write_json"]


def markdown_table(rows: list[dict], columns: list[str], fmt: dict | None = None) -> str:
    """rows of dicts -> a markdown table with the given columns (missing values shown as '-')."""
    fmt = fmt or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if v is None:
                cells.append("-")
            elif isinstance(v, float):
                cells.append(format(v, fmt.get(c, ".3f")))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_json(obj, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2) + "\n")
    return p
