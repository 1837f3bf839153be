"""transformers checkpoint folders in and out.

    unitok checkpoint import SRC --out RUN [--format auto|llama|qwen2|qwen3|chameleon|emu3|janus]
    unitok checkpoint export-hf RUN --out DIR

Import reads SRC/config.json, the weights (model.safetensors, or shards named by
model.safetensors.index.json; a pickle pytorch_model.bin[.index.json] only through
`unitok.foreign`, which executes nothing) and SRC/tokenizer.json, and writes RUN/checkpoint, a
normal unitok checkpoint: the weights under our names, the text tokenizer (`HFTextTokenizer`) and a
vocabulary that describes the model's ids as they are (text = its vocab_size; <bos>, <eos> and <pad>
its own ids from config.json; no size tokens). Chameleon, Emu3 and Janus add their VQ model
(`model.vqmodel.*`) as an image tokenizer and, where our span formats express it, their image ids
to the vocabulary; Janus its image head (`chameleon.py`, `emu3.py`, `janus.py`). A folder written by
export-hf carries our vocabulary and tokenizers beside the weights: those are kept as they are.

Export writes DIR as both things at once: a transformers checkpoint (config.json, model.safetensors
under transformers' names, generation_config.json; tokenizer.json where the text tokenizer is one)
and a unitok checkpoint (model.json with `"layout": "transformers"`, which `load_model` reads through
`unitok_weights`; vocab.json, tokenizers/, state.json), and a README.md card.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from unitok.errors import CheckpointError, ConfigError, inside, read_json
from unitok.interop.llama import ARCHITECTURES, FAMILIES, hf_config, model_config, shapes, to_hf, to_unitok

__all__ = ["FORMATS", "LAYOUT", "import_checkpoint", "export_hf", "read_hf_weights", "unitok_weights"]

FORMATS = tuple(FAMILIES)
VQ_PREFIX = "model.vqmodel."  # Chameleon's, Emu3's and Janus's VQ model in their weights
LAYOUT = "transformers"  # model.json "layout" of an export-hf folder: weights under transformers' names
_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")


# ------------------------------------------------------------------ reading a folder
def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a transformers folder: an index's shards, else the single file."""
    found = [n for n in _WEIGHTS if (src / n).is_file()]
    if not found:
        raise CheckpointError(f"{src}: no weights ({', '.join(_WEIGHTS)})")
    name = found[0]
    if not name.endswith(".index.json"):
        return _read_file(src / name)
    index = read_json(src / name, "weights index")
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise CheckpointError(f"{src / name}: no weight_map")
    state = {}
    for shard in dict.fromkeys(wmap.values()):
        # shard names are plain file names in SRC, so an index cannot point outside the folder
        state.update(_read_file(inside(src, shard, f"{name} shard")))
    missing = sorted(set(wmap) - set(state))
    if missing:
        raise CheckpointError(f"{src / name}: {missing[0]} is not in its shard {wmap[missing[0]]}")
    return state


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path}: corrupt weights ({str(e).splitlines()[0]})") from None
    from unitok.foreign import load_torch_file, state_dict_from

    return state_dict_from(load_torch_file(path), path, keys=())


def _family(hf: dict, fmt: str, src: Path) -> str:
    """The family config.json names (model_type, else architectures), checked against --format."""
    named = hf.get("model_type") or next((ARCHITECTURES.get(a) or a for a in hf.get("architectures") or []), None)
    if fmt != "auto" and fmt not in FAMILIES:
        raise ConfigError(f"unknown --format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    if named is None:
        if fmt == "auto":
            raise CheckpointError(f"{src}/config.json names no model_type; pass --format ({', '.join(FORMATS)})")
        return fmt
    if named not in FAMILIES:
        raise CheckpointError(f"{src}: unknown architecture {named!r} (config.json model_type); supported: "
                              f"{', '.join(FORMATS)}")
    if fmt not in ("auto", named):
        raise CheckpointError(f"{src}: config.json describes a {named} model, not {fmt}")
    return named


# ------------------------------------------------------------------ import
def import_checkpoint(src, out, fmt: str = "auto", image_decoder=None) -> Path:
    """Import the transformers folder `src` as the unitok run `out` (written to out/checkpoint).
    `image_decoder`: a taming VQGAN checkpoint with the decoder a Chameleon folder lacks."""
    from unitok.checkpoint import CKPT_DIR, save_checkpoint

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise CheckpointError(f"model folder not found: {src}")
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: no config.json (not a transformers model folder)")
    hf = read_json(src / "config.json", "config.json")
    if not isinstance(hf, dict):
        raise CheckpointError(f"{src}/config.json: not a JSON object")
    family = _family(hf, fmt, src)
    f = FAMILIES[family]
    lm = hf.get("text_config") if f.text_config else hf  # the language model's keys
    if not isinstance(lm, dict):
        raise CheckpointError(f"{src}/config.json: a {family} model needs a text_config object")
    if f.text_config and "tie_word_embeddings" in hf:  # the top-level key ties lm_head, as transformers does
        lm = {**lm, "tie_word_embeddings": hf["tie_word_embeddings"]}
    # ids left out are its config class's defaults (transformers 4 saves a text_config without them)
    lm = {"bos_token_id": f.bos, "eos_token_id": f.eos, **lm}
    cfg = model_config(lm, family, src)
    dest = out if out.name == CKPT_DIR else out / CKPT_DIR
    if dest.exists():
        raise CheckpointError(f"{dest} exists; choose another --out")
    if image_decoder is not None and family != "chameleon":
        raise ConfigError(f"--image-decoder is for chameleon models; {src} holds a {family} model")
    weights = {_renamed(k, f.renames): v for k, v in read_hf_weights(src).items()}
    vq = _take(weights, VQ_PREFIX)  # the VQ model, under its own names
    media, layout, heads, refused = {}, {}, {}, {}
    text = _text_tokenizer(src, cfg)
    if family == "chameleon":
        from unitok.interop import chameleon

        media["image"], layout = chameleon.image_side(hf, vq, src, image_decoder)
    elif family == "emu3":
        from unitok.interop import emu3

        media["image"] = emu3.image_tokenizer(hf, vq, src)
        layout = emu3.image_layout(hf, text, media["image"].config.codebook_size, src)
    elif family == "janus":
        from unitok.interop import janus

        for prefix in janus.UNDERSTANDING:
            _take(weights, prefix)
        refused["image"] = janus.REFUSED
        media["image"], layout, full, heads = janus.generation_side(hf, cfg, weights, vq, text, src)
    state = to_unitok(weights, cfg, src)
    if heads:  # the per-modality heads' weights, checked against the config that has them
        cfg = full
        _check_shapes(heads, cfg, src)
        state.update(heads)
    vocab, tokenizers = _vocabulary(src, lm, cfg, text, media, layout)
    meta = {"step": 0, "imported_from": str(src), "source_format": family, "history": []}
    if refused:
        meta["refused_inputs"] = refused
    return save_checkpoint(dest, kind="transformer", config=asdict(cfg), modules={"model": state}, state=meta,
                           vocab=vocab, tokenizers=tokenizers)


def _renamed(name: str, renames) -> str:
    for old, new in renames:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _take(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under `prefix`, removed from `weights`, without the prefix."""
    return {k[len(prefix):]: weights.pop(k) for k in list(weights) if k.startswith(prefix)}


def _check_shapes(state: dict[str, torch.Tensor], cfg, src: Path) -> None:
    """The per-modality heads' weights: all there, each of the shape `cfg` implies."""
    want = shapes(cfg)
    missing = sorted(k for k in want if k.startswith("heads.") and k not in state)
    if missing:
        raise CheckpointError(f"{src}: the weights have no tensor for {missing[0]}, which config.json implies")
    for k, v in state.items():
        if tuple(v.shape) != tuple(want[k]):
            raise CheckpointError(f"{src}: {k} has shape {tuple(v.shape)}, config.json implies {tuple(want[k])}")


def _text_tokenizer(src: Path, cfg):
    """The folder's tokenizer.json (None in an export-hf folder, whose tokenizers are kept)."""
    from unitok.checkpoint import MODEL_JSON, VOCAB_JSON
    from unitok.tokenizers.text import HFTextTokenizer

    if (src / VOCAB_JSON).is_file() and (src / MODEL_JSON).is_file():
        return None
    if not (src / "tokenizer.json").is_file():
        raise CheckpointError(f"{src}: no tokenizer.json (a SentencePiece tokenizer.model alone is not read; "
                              "transformers' save_pretrained writes tokenizer.json)")
    return HFTextTokenizer.from_file(src / "tokenizer.json", vocab_size=cfg.vocab_size)


def _vocabulary(src: Path, hf: dict, cfg, tok, media: dict, layout: dict):
    """(vocab, tokenizers): those of an export-hf folder as they are, else the folder's tokenizer.json,
    its media tokenizers and its ids (`layout`: the span formats, the markers' and codebooks' ids)."""
    from unitok.checkpoint import MODEL_JSON, TOKENIZERS, load_tokenizers, load_vocab
    from unitok.vocab import UnifiedVocab

    if tok is None:
        tokenizers = load_tokenizers(src, read_json(src / MODEL_JSON, "model.json"))
        return load_vocab(src, tokenizers, cfg.vocab_size), {n: src / TOKENIZERS / n for n in tokenizers}
    eos = hf.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos  # Llama 3 instruct lists several: the first ends text
    if eos is None:
        raise CheckpointError(f"{src}/config.json names no eos_token_id (the token that ends a document)")
    # a model without a <bos> starts documents after its <eos>; one without <pad> pads with <eos> (as transformers)
    bos = eos if hf.get("bos_token_id") is None else hf["bos_token_id"]
    pad = eos if hf.get("pad_token_id") is None else hf["pad_token_id"]
    try:
        vocab = UnifiedVocab.from_tokenizers([tok, *media.values()], max_size=0, spans=layout.get("spans", {}),
                                             specials={"<bos>": bos, "<eos>": eos, "<pad>": pad,
                                                       **layout.get("specials", {})},
                                             code_ids=layout.get("code_ids"))
    except ValueError as e:
        raise CheckpointError(f"{src}/config.json: {e}") from None
    return vocab, {"text": tok, **media}


# ------------------------------------------------------------------ export
def export_hf(run, out) -> Path:
    """Write the run's model as a transformers checkpoint that is also a unitok checkpoint (see above)."""
    from safetensors.torch import save_file

    from unitok import checkpoint as ck
    from unitok.config import from_dict
    from unitok.model.config import ModelConfig

    ckpt = ck.resolve(run)
    meta = ck.read_meta(ckpt)
    if meta["kind"] != "transformer" or not (ckpt / ck.VOCAB_JSON).is_file():
        raise CheckpointError(f"{ckpt}: not a language model with a vocabulary; export-hf writes language models")
    state = ck.read_state(ckpt)
    if (state.get("recipe") or {}).get("bidirectional_images"):
        raise CheckpointError(f"{ckpt}: trained with bidirectional_images (full attention inside image spans); "
                              "transformers' causal language models attend causally everywhere")
    cfg = from_dict(ModelConfig, meta["config"], source=str(ckpt / ck.MODEL_JSON))
    tokenizers = ck.load_tokenizers(ckpt, meta)
    vocab = ck.load_vocab(ckpt, tokenizers, cfg.vocab_size)
    weights = unitok_weights(meta, ck.read_weights(ckpt, meta.get("weights", "model")), ckpt)
    dtype = weights["tok_emb.weight"].dtype
    config = hf_config(cfg, vocab, dtype)

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; choose another --out")
    tmp = ck.tmp_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(to_hf(weights, cfg), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    _write_json(tmp / "config.json", config)
    _write_json(tmp / "generation_config.json", {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    _write_json(tmp / ck.MODEL_JSON, {"format": ck.FORMAT, "kind": "transformer", "config": meta["config"],
                                      "weights": "model", "layout": LAYOUT, "tokenizers": sorted(tokenizers)})
    _write_json(tmp / ck.STATE_JSON, {"step": state.get("step"), "exported_from": str(ckpt),
                                      "history": state.get("history", [])})
    vocab.save(tmp / ck.VOCAB_JSON)
    for name in tokenizers:
        shutil.copytree(ckpt / ck.TOKENIZERS / name, tmp / ck.TOKENIZERS / name)
    text = next((t for t in tokenizers.values() if t.modality == "text"), None)
    if hasattr(text, "tokenizer_json"):  # a tokenizer.json: transformers' own tokenizer files too
        (tmp / "tokenizer.json").write_bytes(text.tokenizer_json)
        names = {k: text.tk.id_to_token(getattr(vocab, k)) for k in ("bos", "eos", "pad")}
        _write_json(tmp / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                    **{f"{k}_token": v for k, v in names.items()},
                                                    "model_max_length": cfg.max_seq_len,
                                                    "clean_up_tokenization_spaces": False})
    (tmp / "README.md").write_text(_card(cfg, config, vocab, ckpt, state, text))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _card(cfg, config: dict, vocab, ckpt: Path, state: dict, text) -> str:
    from unitok.model.transformer import UnifiedTransformer

    with torch.device("meta"):
        n = UnifiedTransformer(cfg).num_params()
    arch = config["architectures"][0]
    media = ", ".join(f"{m} ({cb.levels} x {cb.size} codes)" for m, cb in vocab.codebooks.items()) or "none"
    hf_tok = ("`tokenizer.json` (also loads with `AutoTokenizer`)" if hasattr(text, "tokenizer_json") else
              "unitok's SentencePiece model in `tokenizers/text/` (no transformers tokenizer files: serve with "
              "token ids)" if text is not None else "none")
    return f"""# unitok model exported for transformers

`{arch}` ({config['model_type']}), {n / 1e6:.2f}M parameters: {cfg.n_layer} layers, hidden size {cfg.dim},
{cfg.n_head} heads of {cfg.head_dim} ({cfg.kv_heads} key/value heads), feed-forward {cfg.hidden_dim},
context {cfg.max_seq_len} tokens, RoPE theta {cfg.rope_theta:g}{f" with {cfg.rope_scaling['rope_type']} scaling"
if cfg.rope_scaling else ""}, {"tied" if cfg.tie_embeddings else "untied"} embeddings,
{"QK-norm, " if cfg.qk_norm else ""}{"q/k/v biases, " if cfg.qkv_bias else ""}weights in {config['torch_dtype']}.
Exported from `{ckpt}` at step {state.get('step')} by `unitok checkpoint export-hf`.

    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")        # no custom code

    from unitok.generation import Pipeline
    pipe = Pipeline.from_pretrained("THIS_FOLDER")                      # every task of the vocabulary

Vocabulary ({vocab.size} ids, hash {vocab.hash[:12]}): text ids [0, {vocab.text_size}), <bos> {vocab.bos},
<eos> {vocab.eos}, <pad> {vocab.pad}; media codebooks: {media}. Text tokenizer: {hf_tok}.
Media ids are ordinary ids to transformers: its logits cover them, and generating images or audio
needs unitok's pipeline on top of those logits (the span grammar and the media tokenizers in
`tokenizers/`). See docs/interop.md of unitok for what was checked.
"""


# ------------------------------------------------------------------ loading an export
def unitok_weights(meta: dict, state: dict[str, torch.Tensor], source) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint under our names: those of an export-hf folder (model.json
    `"layout": "transformers"`) mapped back; anything else as it is."""
    layout = meta.get("layout")
    if layout is None:
        return state
    if layout != LAYOUT:
        raise CheckpointError(f"{source}: unknown weights layout {layout!r} in model.json")
    from unitok.config import from_dict
    from unitok.model.config import ModelConfig

    return to_unitok(state, from_dict(ModelConfig, meta["config"], source=str(source)), source)


# ------------------------------------------------------------------ CLI handlers
def import_cli(args) -> int:
    print(f"wrote {import_checkpoint(args.src, args.out, args.format, args.image_decoder)}")
    return 0


def export_hf_cli(args) -> int:
    print(f"wrote {export_hf(args.run, args.out)}")
    return 0
