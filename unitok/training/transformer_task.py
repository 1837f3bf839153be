"""The transformer task: what the text LM (`lm.py`) and the unified trainer (`unified.py`) share.

    class MyTask(TransformerTask):
        def __init__(self, cfg, engine, vocab):
            super().__init__(engine, cfg.model, vocab, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                             optim=cfg.optim)
            self.data = ...                       # the subclass supplies its data and its step

The model is built from the recipe's `ModelConfig` with the vocabulary's size filled in on a copy
(`dataclasses.replace`: the caller's config is never written to). `init_from` starts from a checkpoint
before the model is wrapped: one of the same vocabulary (an imported model and shards pretokenized
in its layout, or a unitok run) is continued, its architecture and every weight (the recipe's model
section sets only `RUNTIME_KEYS`); a text LM of the same text tokenizer seeds the text and special
rows and every tensor of the same shape. The engine wraps the model (`parallelize`), AdamW decays
matrices only, and `tokens_per_step` counts the tokens of one optimizer step over all ranks.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from unitok.config import to_dict
from unitok.errors import ConfigError, VocabMismatchError
from unitok.model.config import ModelConfig
from unitok.training.loop import Engine, OptimConfig, Task

__all__ = ["TransformerTask", "transformer_param_groups", "RUNTIME_KEYS"]

# what a recipe's model section still sets when init_from continues a model of the same vocabulary
RUNTIME_KEYS = ("z_loss", "dropout", "attention", "ce_backend", "norm_backend")


def transformer_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups for a UnifiedTransformer: weight decay on linear weights only (not norms, biases
    or the embedding; a per-head QK-norm's gains are 2-D, named *_norm)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "tok_emb" not in name and "_norm." not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TransformerTask(Task):
    """A `UnifiedTransformer` over `vocab` (a `UnifiedVocab`), trained on the engine."""

    kind = "transformer"

    def __init__(self, engine: Engine, model: ModelConfig, vocab, *, batch_size: int, seq_len: int,
                 optim: OptimConfig, init_from: str | None = None, activation_checkpointing: bool = False,
                 freeze_backbone: bool = False):
        from unitok.model.transformer import UnifiedTransformer

        if batch_size % engine.world:
            raise ConfigError(f"batch_size {batch_size} must be a multiple of the {engine.world} processes")
        self.engine, self._vocab = engine, vocab
        start = self._start(init_from) if init_from else None
        if start is not None and start.vocab.hash == vocab.hash:  # continue that model, architecture and all
            self.model_cfg = replace(start.model.cfg, **{k: getattr(model, k) for k in RUNTIME_KEYS})
            added = {m: h for m, h in (model.heads or {}).items()  # the recipe's new diffusion heads
                     if h["kind"] == "diffusion" and m not in (self.model_cfg.heads or {})}
            if added:
                self.model_cfg = replace(self.model_cfg, heads={**(self.model_cfg.heads or {}), **added})
            if seq_len > self.model_cfg.max_seq_len:
                raise ConfigError(f"seq_len {seq_len} exceeds the max_seq_len {self.model_cfg.max_seq_len} of "
                                  f"init_from {init_from}")
        else:
            self.model_cfg = replace(model, vocab_size=vocab.size)
        self.model = UnifiedTransformer(self.model_cfg).to(engine.device)
        if start is not None:
            self._init_from(start, init_from)
        if freeze_backbone:  # only the diffusion heads learn; AdamW skips parameters without gradients
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith("diffusion."))
        if activation_checkpointing:
            from unitok.training.parallel import checkpoint_blocks

            checkpoint_blocks(self.model)
        self.model_train = engine.parallelize(self.model)
        self.param_groups = transformer_param_groups(self.model, optim.weight_decay)
        self.tokens_per_step = batch_size * seq_len * optim.grad_accum

    @staticmethod
    def _start(path):
        from unitok.checkpoint import load_model

        lm = load_model(path)
        if lm.kind != "transformer" or lm.vocab is None:
            raise ConfigError(f"init_from {path}: not a language-model checkpoint")
        return lm

    def _init_from(self, lm, path) -> None:
        """Of the same vocabulary: every weight. Else a text LM's of the same text tokenizer: every
        tensor of the same shape, and the text + special rows of the embedding and output matrices
        (their ids are the same in both vocabularies)."""
        if lm.vocab.hash == self._vocab.hash:  # every weight; diffusion heads the run adds start fresh
            missing, unexpected = self.model.load_state_dict(lm.model.state_dict(), strict=False)
            if unexpected or any(not k.startswith("diffusion.") for k in missing):
                raise ConfigError(f"init_from {path}: weights do not match the model (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")
            return
        if lm.vocab.text_tokenizer != self._vocab.text_tokenizer:
            raise VocabMismatchError(f"init_from {path}: its vocabulary is not the training vocabulary, and its text "
                                     f"tokenizer differs from the training vocabulary's "
                                     f"({lm.vocab.text_tokenizer.get('sha256')} vs "
                                     f"{self._vocab.text_tokenizer.get('sha256')})")
        n = lm.vocab.size_start  # text ids, then the special tokens
        own, src = self.model.state_dict(), lm.model.state_dict()
        with torch.no_grad():
            for k, v in src.items():
                if k not in own:
                    continue
                if own[k].shape == v.shape:
                    own[k].copy_(v)
                elif k in ("tok_emb.weight", "lm_head.weight") and own[k].shape[1:] == v.shape[1:]:
                    own[k][:n].copy_(v[:n])
                else:
                    raise ConfigError(f"init_from {path}: {k} has shape {tuple(v.shape)}, the model "
                                      f"{tuple(own[k].shape)}; use the same model dimensions")

    # what the checkpoint holds
    def model_config(self) -> dict:
        return to_dict(self.model_cfg)

    def vocab(self):
        return self._vocab
