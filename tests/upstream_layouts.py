"""Checkpoints in upstream layouts, for loader tests.

tests/assets/layouts/*.json hold the state-dict keys, shapes and dtypes of the real upstream models
(taming's VQModel, Meta's encodec package), recorded by scripts/record_layouts.py from the packages
themselves. `random_state` fills such a layout with seeded random tensors: a checkpoint with the
upstream names and shapes whose every tensor is distinct, so a test can tell where each one landed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

LAYOUTS = Path(__file__).resolve().parent / "assets" / "layouts"


def read_layout(name: str) -> dict:
    return json.loads((LAYOUTS / name).read_text())


def random_state(layout: dict, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    """{key: tensor of the recorded shape and dtype}: floats ~ N(0, 1) (positive where a count or
    flag is expected), integers in [0, 100). On device "meta": shapes only, no memory."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape, dtype in layout["keys"]:
        dt = getattr(torch, dtype)
        if device == "meta":
            out[key] = torch.empty(shape, dtype=dt, device="meta")
        elif dt.is_floating_point:
            t = torch.randn(shape, generator=gen).to(dt)
            if key.endswith((".inited", ".initted")):
                t = torch.ones(shape, dtype=dt)
            elif key.endswith((".cluster_size", ".running_var")):
                t = t.abs() + 0.5
            out[key] = t
        else:
            out[key] = torch.randint(0, 100, shape, generator=gen).to(dt)
    return out


def landed(source: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> dict[str, str]:
    """For each source tensor, the key of our state dict holding exactly its values (ignoring a
    leading singleton dimension), or no entry if none does."""
    def squeeze(t):
        return t[0] if t.dim() > 1 and t.shape[0] == 1 else t

    index: dict[tuple, list[str]] = {}
    for k, v in ours.items():
        if v.is_floating_point() and v.numel() > 1:
            v = squeeze(v)
            index.setdefault((tuple(v.shape), float(v.double().sum())), []).append(k)
    out = {}
    for k, v in source.items():
        if not v.is_floating_point() or v.numel() <= 1:
            continue
        for cand in index.get((tuple(squeeze(v).shape), float(squeeze(v).double().sum())), []):
            if torch.equal(squeeze(ours[cand]).to(v.dtype), squeeze(v)):
                out[k] = cand
                break
    return out
