"""Emu3 (transformers' `Emu3ForConditionalGeneration`): its VQ model as our `Emu3ImageTokenizer`, and its
image spans as a span format of the imported vocabulary.

The language model maps as the Llama family's (`llama.py`: `text_config`, weights under
`model.text_model.`). The VQ model, `model.vqmodel.*`, loads name for name into
`unitok.tokenizers.emu3.Emu3ImageTokenizer` (encoder, codebook, and the spatial-norm decoder).

An image span, as transformers 5.25 lays it out (`Emu3Processor.replace_image_token`, and
`Emu3ImageVocabularyMapping.convert_img2bpe` for the codes): <|image start|>, the grid's size written
as text ("32*32", tokenized by its tokenizer one digit a token), <|image token|>, each row of codes
followed by <|extra_200|>, then <|extra_201|> <|image end|>. The codes are the ids of the
"<|visual token NNNNNN|>" tokens of `vocabulary_map`, which must be one run in code order: the image
codebook in place among the text ids (`UnifiedVocab(code_ids=...)`), and the span a `SpanFormat` with
a header written as text (`size_text`) and markers inside (`body`, `row_end`, `codes_end`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from unitok.errors import CheckpointError
from unitok.vocab import UNITOK_SPANS, SpanFormat

__all__ = ["image_tokenizer", "image_layout"]

# the processor's tokens (Emu3's tokenizer_config: boi, eoi, image_wrapper and eof tokens), in tokenizer.json
BEGIN, END, BODY, CODES_END = "<|image start|>", "<|image end|>", "<|image token|>", "<|extra_201|>"
ROW_END = "<|extra_200|>"  # transformers reads the row marker from vocabulary_map
_VISUAL = "<|visual token "  # + the code in six digits + "|>"


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


def image_layout(hf: dict, text, codebook_size: int, src: Path) -> dict:
    """The vocabulary layout {"specials", "code_ids", "spans"} of an Emu3 folder's image spans: its
    visual tokens (vocabulary_map) as the image codebook, its markers, and its digits and "*" as the
    size header, as its tokenizer (`text`) writes them."""
    def refuse(why):
        return CheckpointError(f"{src}: cannot import this emu3 model's image spans: {why}")

    vmap = hf.get("vocabulary_map")
    if not isinstance(vmap, dict):
        raise refuse("config.json has no vocabulary_map (the ids of the visual tokens)")
    codes = {int(k[len(_VISUAL):-2]): i for k, i in vmap.items()
             if k.startswith(_VISUAL) and k.endswith("|>") and k[len(_VISUAL):-2].isdigit()}
    if sorted(codes) != list(range(codebook_size)):
        raise refuse(f"vocabulary_map names {len(codes)} visual tokens; the VQ codebook has {codebook_size}")
    start = codes[0]
    if any(codes[c] != start + c for c in codes):
        raise refuse("the visual tokens of vocabulary_map are not one run of ids in code order")
    markers = {name: text.token_id(name) for name in (BEGIN, END, BODY, CODES_END)}
    markers[ROW_END] = vmap.get(ROW_END)
    missing = [name for name, i in markers.items() if i is None]
    if missing:
        raise refuse(f"no {missing[0]} token (tokenizer.json; {ROW_END}: vocabulary_map)")
    chars = {c: text.encode(c) for c in "0123456789*"}
    if any(len(ids) != 1 for ids in chars.values()) or text.encode("10*23") != [chars[c][0] for c in "10*23"]:
        raise refuse('its tokenizer does not write a size such as "10*23" one id per digit and "*"')
    ours = UNITOK_SPANS["image"]  # our begin and end marker names, at Emu3's ids
    fmt = SpanFormat(ours.begin, ours.end, grid=ours.grid, header=ours.header,
                     size_text=tuple(ids[0] for ids in chars.values()), body=BODY, row_end=ROW_END, codes_end=CODES_END)
    return {"specials": {ours.begin: markers[BEGIN], ours.end: markers[END], BODY: markers[BODY],
                         ROW_END: markers[ROW_END], CODES_END: markers[CODES_END]},
            "code_ids": {"image": start}, "spans": {"image": fmt}}
