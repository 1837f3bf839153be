"""One checkpoint format for every trained thing (text LM, unified LM, image/video/audio tokenizers).

    CKPT/
      model.json           {"format", "kind": "transformer" | "tokenizer", "config": {...}, "weights": "model"}
      model.safetensors    the trained module's weights (the names of `module.state_dict()`)
      <name>.safetensors   other trained modules of the run: "ema" (EMA of the weights), "disc" ...
      optimizer.pt         optimizer states, torch.save of tensors only (read with weights_only=True)
      state.json           step, elapsed time, RNG and data position per rank, metrics history, recipe
      vocab.json           the UnifiedVocab manifest (language models)
      tokenizers/<name>/   every tokenizer the model depends on, in its save_pretrained layout

`model.json` alone rebuilds the model: for a transformer its `ModelConfig`, for a tokenizer the
`config.json` its `save_pretrained` writes. `"weights"` names the file inference should use
("ema" where the run keeps an EMA of the weights). A directory is written next to its final
place and renamed into it, so a crash never leaves a half-written checkpoint.

`load_model(dir)` is the inference path: it needs this module, the model and tokenizer code,
safetensors and torch on a CPU; no training code, no GPU, no Triton. A sharded (FSDP2) run keeps
`dcp/` (torch.distributed.checkpoint: model and optimizer shards of every rank) instead of
model.safetensors and optimizer.pt; `load_model` consolidates it in one process, and
`unitok checkpoint export` writes the inference part alone (model.json, the inference weights as
model.safetensors, vocab, tokenizers).

Loading trusts nothing in the directory: no pickle is read unrestricted (optimizer.pt with
weights_only=True, dcp/ through unitok.dcp), the names model.json gives are plain names of files or
folders inside it, and a symlink or special file anywhere inside is refused (CheckpointError).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unitok.errors import CheckpointError, inside, read_json

__all__ = ["FORMAT", "Loaded", "save_checkpoint", "load_model", "read_state", "read_weights", "read_optimizers",
           "resolve", "export", "convert", "module_state", "trained_heads", "check_head"]

FORMAT = "unitok-checkpoint/1"
MODEL_JSON, STATE_JSON, VOCAB_JSON, OPTIM = "model.json", "state.json", "vocab.json", "optimizer.pt"
TOKENIZERS = "tokenizers"
CKPT_DIR = "checkpoint"  # a run directory keeps its latest checkpoint here


def module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as contiguous CPU tensors (unwraps DDP and torch.compile)."""
    module = getattr(module, "module", module)
    module = getattr(module, "_orig_mod", module)
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def tmp_dir(directory) -> Path:
    """The directory a checkpoint is written into before it is renamed into place."""
    d = Path(directory)
    return d.with_name(d.name + ".tmp")


def save_checkpoint(directory, *, kind: str, config: dict, modules: dict[str, nn.Module | dict],
                    state: dict, optimizers: dict[str, Any] | None = None, weights: str = "model",
                    vocab=None, tokenizers: dict[str, Any] | None = None, sharded: bool = False) -> Path:
    """Write a checkpoint atomically. `modules` maps a name to a module (or a state dict);
    "model" is required unless `sharded` (then the ranks have already written `tmp_dir(directory)/dcp`
    with torch.distributed.checkpoint). `optimizers` maps a name to an optimizer (or its state dict)."""
    from safetensors.torch import save_file

    if not sharded and ("model" not in modules or weights not in modules):
        raise ValueError("modules must hold 'model' and the module named by `weights`")
    d = Path(directory)
    tmp = tmp_dir(d)
    if not sharded:
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    for name, m in modules.items():
        sd = m if isinstance(m, dict) else module_state(m)
        save_file(sd, str(tmp / f"{name}.safetensors"))
    meta = {"format": FORMAT, "kind": kind, "config": config, "weights": "dcp" if sharded else weights,
            "tokenizers": sorted(tokenizers or {})}
    _write_json(tmp / MODEL_JSON, meta)
    if optimizers:
        torch.save({k: (o if isinstance(o, dict) else o.state_dict()) for k, o in optimizers.items()}, tmp / OPTIM)
    if vocab is not None:
        vocab.save(tmp / VOCAB_JSON)
    for name, tok in (tokenizers or {}).items():
        if isinstance(tok, (str, Path)):  # already saved: copy its folder of regular files
            check_tree(Path(tok))
            shutil.copytree(tok, tmp / TOKENIZERS / name, symlinks=True)  # never follow a link (none was there)
        else:
            tok.save_pretrained(tmp / TOKENIZERS / name)
    _write_json(tmp / STATE_JSON, state)
    _replace(tmp, d)
    return d


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def _replace(tmp: Path, d: Path) -> None:
    """Move `tmp` to `d`; the previous `d` survives as `d.old` until the new one is in place."""
    old = d.with_name(d.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if d.exists():
        d.rename(old)
    tmp.rename(d)
    shutil.rmtree(old, ignore_errors=True)


def check_tree(root: Path) -> None:
    """A checkpoint (or a folder copied into one) holds regular files and folders only: a symlink may
    point anywhere, a FIFO blocks a reader and a device never ends."""
    for folder, dirs, files in os.walk(root):  # os.walk lists symlinked folders but does not enter them
        for name in dirs + files:
            p = Path(folder) / name
            if p.is_symlink() or not (p.is_dir() or p.is_file()):
                what = "a symlink" if p.is_symlink() else "a special file"
                raise CheckpointError(f"{root}: {p.relative_to(root)} is {what}; a checkpoint holds regular "
                                      "files and folders only")


def resolve(path) -> Path:
    """A run directory (holding checkpoint/) or a checkpoint directory -> the checkpoint directory,
    checked by `check_tree`."""
    p = Path(path)
    for ckpt in (p / CKPT_DIR, p):
        if (ckpt / MODEL_JSON).is_file():
            if ckpt.is_symlink() and ckpt != p:  # the run directory's checkpoint/ must be its own
                raise CheckpointError(f"{ckpt} is a symlink; a run directory holds its checkpoint itself")
            check_tree(ckpt)
            return ckpt
    for old in (p / CKPT_DIR / "state.json", p / "state.json", p / "ckpt" / "last.pt", p / "checkpoint.pt"):
        if old.is_file():
            raise CheckpointError(f"{path}: a checkpoint of an older unitok layout; convert it with "
                                  f"`unitok checkpoint convert {path} NEW`")
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(f"{path}: not a unitok checkpoint (no {MODEL_JSON})")


def read_meta(ckpt: Path) -> dict:
    meta = read_json(ckpt / MODEL_JSON, "checkpoint model.json")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{ckpt / MODEL_JSON}: not a {FORMAT} model.json")
    return meta


def read_state(ckpt: Path) -> dict:
    p = ckpt / STATE_JSON
    if not p.is_file():
        raise CheckpointError(f"{ckpt}: incomplete checkpoint, {STATE_JSON} is missing")
    try:
        st = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: corrupt checkpoint state ({type(e).__name__}: {e})") from None
    if not isinstance(st, dict):
        raise CheckpointError(f"{p}: corrupt checkpoint state (not a JSON object)")
    return st


def read_weights(ckpt: Path, name: str = "model", map_location="cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if name == "dcp":
        return read_sharded_weights(ckpt)
    inside(ckpt, name, "weights name")
    p = ckpt / f"{name}.safetensors"
    if not p.is_file():
        raise CheckpointError(f"{ckpt}: incomplete checkpoint, {p.name} is missing")
    try:
        return load_file(str(p), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{p}: corrupt weights ({str(e).splitlines()[0]})") from None


def read_sharded_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """Consolidate the model of a sharded (FSDP2) checkpoint in one process: build the model that
    model.json describes and let torch.distributed.checkpoint fill its full tensors (no process group)."""
    from unitok.dcp import load_dcp

    if not (ckpt / "dcp").is_dir():
        raise CheckpointError(f"{ckpt}: incomplete sharded checkpoint, dcp/ is missing")
    model, _ = build_model(read_meta(ckpt), ckpt / MODEL_JSON)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.simplefilter("ignore", UserWarning)
        load_dcp(state, ckpt / "dcp", no_dist=True)
    return state["model"]


def read_optimizers(ckpt: Path, map_location="cpu") -> dict:
    from unitok.foreign import load_weights_only

    p = ckpt / OPTIM
    if not p.is_file():
        raise CheckpointError(f"{ckpt}: incomplete checkpoint, {OPTIM} is missing")
    try:
        return load_weights_only(p, map_location)
    except CheckpointError as e:  # a stated size refused
        raise CheckpointError(f"{p}: corrupt optimizer state ({e})") from None
    except Exception as e:  # torch raises many types for truncated or garbled files
        raise CheckpointError(f"{p}: corrupt optimizer state ({type(e).__name__})") from None


def load_into(module: nn.Module, weights: dict, source) -> None:
    """load_state_dict(strict) with a one-line CheckpointError when the weights do not fit."""
    try:
        module.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise CheckpointError(f"{source}: weights do not fit the model config ({msg[:300]})") from None


# ------------------------------------------------------------------ inference loading
@dataclass
class Loaded:
    """What `load_model` returns. `model` is a UnifiedTransformer or a tokenizer (in eval mode)."""

    model: nn.Module
    kind: str
    config: Any
    path: Path
    vocab: Any = None
    tokenizers: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)


def build_model(meta: dict, source) -> tuple[nn.Module, Any]:
    """The untrained model that `model.json` describes, and its config object."""
    from unitok.config import from_dict

    if meta["kind"] == "transformer":
        from unitok.model.config import ModelConfig
        from unitok.model.transformer import UnifiedTransformer

        from unitok.errors import ConfigError

        try:
            cfg = from_dict(ModelConfig, meta["config"], source=str(source))
        except ConfigError as e:
            raise CheckpointError(f"corrupt model config: {e}") from None
        return UnifiedTransformer(cfg), cfg
    if meta["kind"] == "tokenizer":
        from unitok.tokenizers.base import tokenizer_from_config

        tok = tokenizer_from_config(dict(meta["config"]), source=str(source))
        return tok, tok.config
    raise CheckpointError(f"{source}: unknown model kind {meta['kind']!r}")


def load_model(path, *, map_location="cpu", weights: str | None = None, heads: dict | None = None) -> Loaded:
    """Load a checkpoint (run dir or checkpoint dir) for inference.

    `heads` {modality: "discrete" | "diffusion"}: the output heads the caller will use; a head the
    checkpoint was not trained with is a CheckpointError (`check_head`), never a guess.

    The fused-kernel backends are a property of the machine, not of the weights: "triton" becomes
    "auto", so a model trained with the kernels on a GPU runs on a CPU with the torch ops.
    Missing or corrupt files raise CheckpointError; a vocabulary manifest that does not match the
    model or its tokenizers raises VocabMismatchError."""
    ckpt = resolve(path)
    meta = read_meta(ckpt)
    if meta["kind"] == "transformer":
        cfg = dict(meta["config"])
        for k in ("attention", "norm_backend", "ce_backend"):
            if cfg.get(k) == "triton":
                cfg[k] = "auto"
        meta = {**meta, "config": cfg}
    model, cfg = build_model(meta, ckpt / MODEL_JSON)
    state = read_weights(ckpt, weights or meta.get("weights", "model"), map_location)
    if "layout" in meta:  # weights under transformers' names (`unitok checkpoint export-hf`)
        from unitok.interop import unitok_weights

        state = unitok_weights(meta, state, ckpt)
    load_into(model, state, ckpt)
    model.eval()
    out = Loaded(model=model, kind=meta["kind"], config=cfg, path=ckpt, state=read_state(ckpt))
    out.tokenizers = load_tokenizers(ckpt, meta)
    if (ckpt / VOCAB_JSON).is_file():
        out.vocab = load_vocab(ckpt, out.tokenizers, getattr(cfg, "vocab_size", None))
    for m, head in (heads or {}).items():
        check_head(out, m, head)
    return out


def trained_heads(loaded: Loaded) -> dict[str, str]:
    """modality -> "discrete" | "diffusion" | "both": the heads a unified checkpoint trained (its
    state's task.heads; every media modality "discrete" in checkpoints from before the heads)."""
    recorded = loaded.state.get("task", {}).get("heads")
    if recorded is not None:
        return dict(recorded)
    return {m: "discrete" for m in (loaded.vocab.codebooks if loaded.vocab is not None else ())}


def check_head(loaded: Loaded, modality: str, head: str) -> None:
    """CheckpointError (one line) unless `loaded` has the `head` ("discrete" or "diffusion") of `modality`."""
    if head not in ("discrete", "diffusion"):
        raise CheckpointError(f"unknown head {head!r} for {modality}; use discrete or diffusion")
    have = trained_heads(loaded).get(modality)
    if have is None:
        raise CheckpointError(f"{loaded.path}: the model has no {modality} output")
    if have not in (head, "both"):
        raise CheckpointError(f"{loaded.path}: no {head} head for {modality} (the checkpoint has a {have} head; "
                              f"train one with heads.{modality}: {head} or both)")


def tokenizer_dirs(ckpt: Path, meta: dict) -> dict[str, Path]:
    """The folders of the tokenizers model.json lists, each a plain name inside tokenizers/."""
    names = meta.get("tokenizers", [])
    if not isinstance(names, list):
        raise CheckpointError(f"{ckpt / MODEL_JSON}: \"tokenizers\" is not a list of names")
    return {name: inside(ckpt / TOKENIZERS, name, "tokenizer name") for name in names}


def load_tokenizers(ckpt: Path, meta: dict) -> dict:
    from unitok.tokenizers.base import load_tokenizer

    return {name: load_tokenizer(d) for name, d in tokenizer_dirs(ckpt, meta).items()}


def load_vocab(ckpt: Path, tokenizers: dict, vocab_size: int | None):
    """The saved manifest, checked against the stored tokenizers and the model's embedding size."""
    from unitok.errors import VocabMismatchError
    from unitok.vocab import UnifiedVocab

    vocab = UnifiedVocab.load(ckpt / VOCAB_JSON)
    if tokenizers:
        vocab.check_tokenizers(tokenizers, what=f"tokenizers in {ckpt / TOKENIZERS}")
    if vocab_size is not None and vocab_size != vocab.size:
        raise VocabMismatchError(f"{ckpt}: model vocab_size {vocab_size} != manifest size {vocab.size}")
    return vocab


# ------------------------------------------------------------------ export and conversion
def export(path, out) -> Path:
    """Write a consolidated inference checkpoint: model.json, the inference weights as
    model.safetensors, vocab and tokenizers; no optimizer or training state."""
    ckpt = resolve(path)
    meta = read_meta(ckpt)
    weights = read_weights(ckpt, meta.get("weights", "model"))
    if "layout" in meta:  # an export-hf folder: written back under our names
        from unitok.interop import unitok_weights

        weights = unitok_weights(meta, weights, ckpt)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} exists and is not empty; choose another --out")
    st = read_state(ckpt)
    state = {"step": st.get("step"), "exported_from": str(ckpt), "history": st.get("history", [])}
    tokenizers = tokenizer_dirs(ckpt, meta)
    vocab = None
    if (ckpt / VOCAB_JSON).is_file():
        from unitok.vocab import UnifiedVocab

        vocab = UnifiedVocab.load(ckpt / VOCAB_JSON)
    return save_checkpoint(out, kind=meta["kind"], config=meta["config"], modules={"model": weights}, state=state,
                           vocab=vocab, tokenizers=tokenizers)


def convert(old, new) -> Path:
    """Convert a checkpoint of the layouts before `unitok-checkpoint/1` (text-LM `checkpoint/` with
    state.json, tokenizer `final/` folders need no conversion) into this format, for inference
    and as the weights of a new run (optimizer state and RNG are not carried over)."""
    from unitok.errors import ConfigError

    old = Path(old)
    src = old / CKPT_DIR if (old / CKPT_DIR / "state.json").is_file() else old
    if not (src / "state.json").is_file() or not (src / "model.safetensors").is_file():
        raise CheckpointError(f"{old}: not an old text-LM checkpoint (no state.json + model.safetensors); "
                              "old tokenizer runs: use OUT/final, which loads as it is")
    st = read_json(src / "state.json", "old state.json")
    try:
        model_cfg = dict(st["config"]["model"])
    except (KeyError, TypeError):
        raise CheckpointError(f"{src / 'state.json'}: no model config") from None
    meta = {"format": FORMAT, "kind": "transformer", "config": model_cfg}
    try:
        build_model(meta, src)
    except ConfigError as e:
        raise CheckpointError(f"{src}: {e}") from None
    from safetensors.torch import load_file

    from unitok.vocab import UnifiedVocab

    tokenizers = {"text": src / "tokenizer"} if (src / "tokenizer").is_dir() else {}
    state = {"step": st.get("step", 0), "converted_from": str(src), "history": st.get("history", [])}
    dest = Path(new) if Path(new).name == CKPT_DIR else Path(new) / CKPT_DIR  # a run directory, or its checkpoint/
    return save_checkpoint(dest, kind="transformer",
                           config=model_cfg, modules={"model": load_file(str(src / "model.safetensors"))},
                           state=state, vocab=UnifiedVocab.load(src / "vocab.json"), tokenizers=tokenizers)


def export_cli(args) -> int:
    print(f"wrote {export(args.run, args.out)}")
    return 0


def convert_cli(args) -> int:
    print(f"wrote {convert(args.old, args.new)}")
    return 0

