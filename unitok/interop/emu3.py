"""Emu3 (transformers' `Emu3ForConditionalGeneration`): its VQ model as our `Emu3ImageTokenizer`.

The language model maps as the Llama family's (`llama.py`: `text_config`, weights under
`model.text_model.`). The VQ model, `model.vqmodel.*`, loads name for name into
`unitok.tokenizers.emu3.Emu3ImageTokenizer` (encoder, codebook, and the spatial-norm decoder).

Emu3's image spans are not a span format of our vocabulary: <|image start|>, the grid's size written
as text ("32*32"), <|image token|>, then each row of codes followed by a row marker (<|extra_200|>),
then <|extra_201|> and <|image end|>. So the imported vocabulary has Emu3's ids as text ids, and the
image tokenizer is written beside the run (`IMAGE_TOKENIZER`), not as one of its tokenizers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from unitok.errors import CheckpointError

__all__ = ["IMAGE_TOKENIZER", "image_tokenizer"]

IMAGE_TOKENIZER = "image-tokenizer"  # the folder beside the run's checkpoint/ that holds the VQ


def image_tokenizer(hf: dict, vq_state: dict[str, torch.Tensor], src: Path):
    """The `Emu3ImageTokenizer` of an Emu3 folder's vq_config and `model.vqmodel.*` weights."""
    from unitok.config import from_dict
    from unitok.tokenizers.emu3 import Emu3ImageTokenizer, Emu3VQConfig

    def refuse(why):
        return CheckpointError(f"{src}: cannot import this emu3 model's VQ: {why}")

    vq = hf.get("vq_config") or {}
    if vq.get("double_latent"):
        raise refuse("vq_config double_latent (a KL autoencoder's latent, not a VQ encoder)")
    mult = list(vq.get("channel_multiplier", [1, 2, 2, 4]))
    width = vq.get("base_channels", 256) * mult[-1]
    if vq.get("hidden_size", 1024) != width:
        raise refuse(f"vq_config hidden_size {vq.get('hidden_size', 1024)} is not the width of its attention blocks "
                     f"(base_channels x channel_multiplier[-1] = {width})")
    try:
        cfg = from_dict(Emu3VQConfig, dict(
            codebook_size=vq.get("codebook_size", 32768), embed_dim=vq.get("embed_dim", 4),
            latent_channels=vq.get("latent_channels", 4), in_channels=vq.get("in_channels", 3),
            out_channels=vq.get("out_channels", 3), temporal_factor=vq.get("temporal_downsample_factor", 4),
            ch=vq.get("base_channels", 256), ch_mult=mult, num_res_blocks=vq.get("num_res_blocks", 2),
            attn_levels=list(vq.get("attn_resolutions") or []), attn_heads=vq.get("num_attention_heads", 1)),
            source=f"{src}/config.json vq_config")
    except (TypeError, ValueError) as e:
        raise refuse(f"vq_config: {e}") from None
    tok = Emu3ImageTokenizer(cfg)
    own = tok.state_dict()
    missing, unexpected = sorted(set(own) - set(vq_state)), sorted(set(vq_state) - set(own))
    bad = [k for k in own if k in vq_state and vq_state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise refuse(f"model.vqmodel.* does not match vq_config (missing {missing[:2]}, unexpected {unexpected[:2]}, "
                     f"wrong shape {bad[:2]})")
    tok.load_state_dict(vq_state)
    return tok.eval()
