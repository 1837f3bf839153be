"""How well an image tokenizer's decoder renders its continuous latent (issue 24's ceiling check).

    r = continuous_vs_quantized(tok, "held_out/", size=256)
    r["psnr_codes_db"], r["psnr_latents_db"]    # decode(encode(x)) and decode_latents(latents(x)) vs x

A diffusion head generates `latents(x)`, so `decode_latents(latents(x))` bounds what it can reach,
as `decode(encode(x))` bounds the discrete head. A decoder trained only on quantized latents may
render raw latents worse than codes: this measures it. Video tokenizers are measured per frame
through their image tokenizer; audio is measured by the audio benchmarks' mel distance (not here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["continuous_vs_quantized"]


@torch.no_grad()
def continuous_vs_quantized(tok, directory: str | Path, size: int = 256) -> dict:
    """Per image (resized and centre-cropped to size x size, as pretokenization does) the PSNR in dB
    of both paths against the prepared image, and their means."""
    from unitok.data.media import list_media, to_uint8
    from unitok.data.policy import image_input
    from unitok.errors import DataError
    from unitok.metrics import psnr

    paths = list_media(directory, "image")
    if not paths:
        raise DataError(f"{directory}: no images")
    rows = []
    for p in paths:
        x = image_input(p, size)
        ref = to_uint8(x[0])
        rows.append({"image": p.name,
                     "psnr_codes_db": psnr(ref, to_uint8(tok.decode(tok.encode(x))[0])),
                     "psnr_latents_db": psnr(ref, to_uint8(tok.decode_latents(tok.latents(x))[0]))})
    return {"images": len(rows), "size": size,
            "psnr_codes_db": float(np.mean([r["psnr_codes_db"] for r in rows])),
            "psnr_latents_db": float(np.mean([r["psnr_latents_db"] for r in rows])),
            "per_image": rows}
