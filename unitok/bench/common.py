"""Helpers shared by the benchmarks: metrics, markdown tables, image grids, JSON output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["psnr", "ssim", "markdown_table", "save_grid", "write_json"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays (peak 255); capped at 100 dB for identical inputs."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else float(10 * math.log10(255.0 ** 2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 (H, W, 3) images (scikit-image, Gaussian window as Wang et al. 2004, mean over channels)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


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


def save_grid(rows: list[list[np.ndarray]], path: str | Path, pad: int = 2) -> Path:
    """Save rows of equally sized uint8 (H, W, 3) images as one PNG (white padding)."""
    from PIL import Image

    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y:y + h, x:x + w] = im[:h, :w]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(p)
    return p


def write_json(obj, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2) + "\n")
    return p
