"""Output helpers shared by trainers, benchmarks and applications: markdown tables, JSON files and the
per-modality loss plot (metrics live in unitok.metrics)."""

from __future__ import annotations

import json
from pathlib import Path

from unitok.vocab import Modality

__all__ = ["markdown_table", "write_json", "plot_curves"]


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


def plot_curves(history: list[dict], path: Path, entropy: dict | None = None, tokens_per_step: int | None = None,
                dpi: int = 110) -> None:
    """Training (thin) and held-out (dots) loss per modality against steps, or against training tokens
    with `tokens_per_step`; `entropy` {modality: nats} draws each modality's baseline (dashed): the
    unified trainer's is the held-out targets' cross-entropy under the training unigram given the level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = tokens_per_step or 1
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, m in enumerate(mod.name.lower() for mod in Modality):  # text, image, video, audio: colours C0-C3
        tr = [(r["step"] * x, r[f"loss_{m}"]) for r in history if f"loss_{m}" in r]
        ev = [(r["step"] * x, r[f"eval_loss_{m}"]) for r in history if f"eval_loss_{m}" in r]
        if tr:
            ax.plot(*zip(*tr), color=f"C{i}", lw=0.8, alpha=0.6, label=f"{m} (train)")
        if ev:
            ax.plot(*zip(*ev), "o-", color=f"C{i}", ms=3, label=f"{m} (held out)")
        if entropy and m in entropy:
            ax.axhline(entropy[m], color=f"C{i}", ls="--", lw=0.8)
    ax.set_xlabel("training tokens" if tokens_per_step else "step")
    ax.set_ylabel("loss (nats/token)" + ("; dashed: unigram baseline" if entropy else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
