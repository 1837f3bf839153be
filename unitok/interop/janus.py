"""Janus (transformers' `JanusForConditionalGeneration`): its image generation as a per-modality head.

The language model maps as the Llama family's (`llama.py`: `text_config`, weights under
`model.language_model.`; tied to the embedding where the top-level `tie_word_embeddings` says so,
as transformers ties it). Janus generates an image as 24 x 24 codes of its VQ-16 tokenizer (LlamaGen's
design), and reads them through modules of its own (transformers 5.25, `models/janus`):

- in: `generation_embeddings` (one vector of vq embed_dim per code) and `generation_aligner` (fc1,
  then GELU + Linear for each of vq num_hidden_layers - 1 hidden_layers) into the LM's width;
- out: `generation_head` (proj_out, GELU, vision_head) from the LM's final-normed hidden state to the
  codes' logits, in place of lm_head.

Those become the image head of our model (`ModelConfig.heads["image"]`, kind "mlp"): the image codes
are ids after the text ids, [text, text + codes), embedded and predicted by that head. An image span
is <begin_of_image>, the grid's codes, <end_of_image> (the tokenizer's tokens; a fixed grid of
vq num_patches x num_patches, no size tokens).

Janus understands images through SigLIP features (`vision_model` + `aligner`), a path unitok does not
compute: those weights are not imported, and tasks that read an image are refused with that reason
(`state.json` "refused_inputs"). The VQ model (`model.vqmodel.*`) becomes our `ImageTokenizer` with
a cosine codebook: transformers' decoder lists its levels deepest first (`decoder.up.0`), taming's
and ours shallowest first. transformers' encode compares the latents with the stored codes without
normalising either, Janus's own code (LlamaGen's `codebook_l2_norm`) normalises both, as ours does:
the two agree exactly where the stored codes have unit norm (which VQ-16's initialisation gives).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from unitok.errors import CheckpointError
from unitok.vocab import UNITOK_SPANS, SpanFormat

__all__ = ["BEGIN", "END", "UNDERSTANDING", "generation_side"]

BEGIN, END = "<begin_of_image>", "<end_of_image>"  # Janus's image markers in its tokenizer
UNDERSTANDING = ("model.vision_model.", "model.aligner.")  # the SigLIP path: not imported
REFUSED = ("Janus reads images through SigLIP features (vision_model + aligner), which unitok does not compute; "
           "its imported image codes are for generating images")


def generation_side(hf: dict, cfg, weights: dict, vq_state: dict, text, src: Path):
    """(image tokenizer, vocabulary layout, the model config with its image head, the head's weights
    under our names) of a Janus folder; the generation tensors are taken out of `weights`."""
    def refuse(why):
        return CheckpointError(f"{src}: cannot import this janus model: {why}")

    vq = hf.get("vq_config") or {}
    if vq.get("hidden_act", "gelu") != "gelu":
        raise refuse(f"vq_config hidden_act {vq['hidden_act']!r} (the generation aligner and head use GELU)")
    for key in ("projection_dim", "image_token_embed_dim"):
        if vq.get(key, 2048) != cfg.dim:
            raise refuse(f"vq_config {key} {vq.get(key, 2048)} is not the language model's hidden_size {cfg.dim}")
    tok = _vq_tokenizer(vq, vq_state, src, refuse)
    size = tok.codebook_size
    head = {"kind": "mlp", "start": cfg.vocab_size, "size": size, "code_dim": tok.config.embed_dim,
            "in_layers": vq.get("num_hidden_layers", 2), "out_hidden": vq.get("projection_dim", 2048)}
    full = replace(cfg, vocab_size=cfg.vocab_size + size, heads={"image": head})
    state = _head_weights(weights, src)
    markers = {}
    for name in (BEGIN, END):
        markers[name] = text.token_id(name)
        if markers[name] is None:
            raise refuse(f"its tokenizer.json has no {name} (the image's begin and end tokens)")
    side = vq.get("num_patches", 32)
    ours = UNITOK_SPANS["image"]  # our marker names, at Janus's ids
    layout = {"specials": {ours.begin: markers[BEGIN], ours.end: markers[END]},
              "spans": {"image": SpanFormat(ours.begin, ours.end, grid=ours.grid, sizes=(side, side))}}
    return tok, layout, full, state


def _head_weights(weights: dict, src: Path) -> dict[str, torch.Tensor]:
    """model.generation_* -> heads.image.* (shapes are checked against the config by the caller)."""
    names = {"model.generation_embeddings.weight": "embed.weight"}
    for kind in ("weight", "bias"):
        names[f"model.generation_aligner.fc1.{kind}"] = f"aligner.0.{kind}"
        names[f"model.generation_head.proj_out.{kind}"] = f"proj.{kind}"
        names[f"model.generation_head.vision_head.{kind}"] = f"out.{kind}"
    out = {}
    for n in [k for k in weights if k.startswith("model.generation_")]:
        m = re.fullmatch(r"model\.generation_aligner\.hidden_layers\.(\d+)\.(weight|bias)", n)
        ours = f"aligner.{int(m[1]) + 1}.{m[2]}" if m else names.get(n)
        if ours is None:
            raise CheckpointError(f"{src}: unexpected tensor {n} for this config.json")
        out[f"heads.image.{ours}"] = weights.pop(n)
    return out


def _vq_tokenizer(vq: dict, vq_state: dict, src: Path, refuse):
    """The VQ-16 model as our `ImageTokenizer` (`vq16_config`), its decoder's levels reordered."""
    from unitok.tokenizers.image import ImageTokenizer, vq16_config

    if vq.get("double_latent"):
        raise refuse("vq_config double_latent (a KL autoencoder's latent, not a VQ encoder)")
    if vq.get("out_channels", 3) != vq.get("in_channels", 3):
        raise refuse("vq_config out_channels differs from in_channels")
    mult = list(vq.get("channel_multiplier", [1, 1, 2, 2, 4]))
    try:
        cfg = vq16_config(ch=vq.get("base_channels", 128), ch_mult=mult, num_res_blocks=vq.get("num_res_blocks", 2),
                          z_channels=vq.get("latent_channels", 256), embed_dim=vq.get("embed_dim", 8),
                          codebook_size=vq.get("num_embeddings", 16384), in_channels=vq.get("in_channels", 3),
                          source=f"{src}/config.json vq_config")
    except (TypeError, ValueError) as e:
        raise refuse(f"vq_config: {e}") from None
    last = len(mult) - 1
    state = {}
    for k, v in vq_state.items():
        m = re.fullmatch(r"decoder\.up\.(\d+)\.(.+)", k)  # deepest level first -> shallowest first
        state[f"decoder.up.{last - int(m[1])}.{m[2]}" if m else k] = v
    tok = ImageTokenizer(cfg)
    tok.load_taming_state_dict(state, source=f"{src} (model.vqmodel.*)")
    return tok.eval()
