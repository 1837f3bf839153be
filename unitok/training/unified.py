"""Unified multimodal pretraining on token shards, on the engine.

    unitok train configs/train/unified-debug.yaml --data SHARDS --out RUN [--resume] [key=value ...]
    torchrun --nproc_per_node=2 -m unitok.cli train CONFIG --data SHARDS --out RUN run.parallel=fsdp2

One `UnifiedTransformer` learns next tokens over packed documents of every modality
(`unitok.data.packed`): attention and positions restart per document and no loss crosses one.
The loss is logged per modality (text, image, video, audio) on training batches and on the
held-out split (`split_shards`: by source; every held-out target once, without the z-loss); the
summary puts each held-out loss beside its fair baseline (`unigram_cross_entropy` of the same
targets) and says per document kind what was held out; `loss_weights` weight the modalities
(0 = input only), `model.z_loss` adds the z-loss to the training loss, `cond_dropout` removes the
text before media spans at that rate (classifier-free guidance; recorded in the checkpoint).
`init_from` starts from a text-LM checkpoint (text and special rows copied, new rows initialised).
The checkpoint carries the vocabulary, every tokenizer of the shards and a card (README.md).

Output heads per media modality (`heads`, default discrete): "discrete" (next-token loss on the codes),
"diffusion" (a `DiffusionHead` of kind "diffusion" in `ModelConfig.heads`, configured by `diffusion`,
learns the span's latent tokens from the hidden states that precede them; the codes stay the
backbone's inputs, without their next-token loss) or "both" (the two losses on one backbone,
`diffusion_weight` times the diffusion loss). The diffusion targets are, for now, the dequantized
latents of the batch's codes (`code_latents`): shards with continuous latents (`pretokenize
--latents`) are not written yet. `freeze_backbone` trains only the diffusion heads (with `init_from`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from unitok.config import load_config, to_dict
from unitok.errors import ConfigError, VocabMismatchError
from unitok.model.config import ModelConfig, debug
from unitok.model.diffusion_head import code_latents, diffusion_head_spec
from unitok.reporting import plot_curves
from unitok.training.loop import Engine, OptimConfig, RunConfig
from unitok.training.transformer_task import TransformerTask
from unitok.vocab import Modality

__all__ = ["UnifiedConfig", "UnifiedTask", "train_unified", "versus_baseline", "run_cli", "MODALITIES"]

MODALITIES = tuple(m.name.lower() for m in Modality)  # "text", "image", "video", "audio": Modality values 0..3
HEAD_MODES = ("discrete", "diffusion", "both")


@dataclass
class UnifiedConfig:
    model: ModelConfig = field(default_factory=debug)  # vocab_size comes from the shards
    seq_len: int = 256  # tokens per packed row (<= model.max_seq_len)
    batch_size: int = 8  # rows per step, over all ranks
    eval_fraction: float = 0.05  # documents held out
    eval_every: int = 100  # steps; 0 = only at the end
    eval_batches: int = 8
    loss_weights: dict = field(default_factory=lambda: {m: 1.0 for m in MODALITIES})
    cond_dropout: float = 0.1  # probability that a document's text before its media spans is removed
    bidirectional_images: bool = False  # full attention inside image spans (needs loss_weights.image = 0)
    activation_checkpointing: bool = False
    init_from: str | None = None  # a text-LM checkpoint to start from
    heads: dict = field(default_factory=dict)  # media modality -> "discrete" | "diffusion" | "both" (default discrete)
    diffusion: dict = field(default_factory=dict)  # DiffusionHeadConfig fields (latent_dim etc. from the tokenizer)
    diffusion_weight: float = 1.0  # weight of the diffusion loss beside the next-token loss
    freeze_backbone: bool = False  # train only the diffusion heads (of an init_from run)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1,
                                                                   warmup_steps=20))
    run: RunConfig = field(default_factory=lambda: RunConfig(log_every=10, ckpt_every=200))

    def __post_init__(self):
        unknown = set(self.loss_weights) - set(MODALITIES)
        if unknown:
            raise ValueError(f"loss_weights: unknown modality {sorted(unknown)[0]!r}; use {', '.join(MODALITIES)}")
        if self.seq_len > self.model.max_seq_len:
            raise ValueError(f"seq_len {self.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}")
        if self.bidirectional_images and self.loss_weights.get("image", 1.0) > 0:
            raise ValueError("bidirectional_images attends to later image tokens, so their next-token loss "
                             "would see the answer: set loss_weights.image=0 (images as inputs only)")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError("cond_dropout must be in [0, 1)")
        for m, kind in self.heads.items():
            if m not in MODALITIES[1:] or kind not in HEAD_MODES:
                raise ValueError(f"heads: {m}: {kind!r}; use a media modality ({', '.join(MODALITIES[1:])}) -> "
                                 f"{' | '.join(HEAD_MODES)}")
        if self.bidirectional_images and self.heads.get("image", "discrete") != "discrete":
            raise ValueError("bidirectional_images lets each image state see the span's later codes, which the "
                             "diffusion head's condition must not: keep heads.image discrete with it")
        if self.diffusion.get("projector") == "resampler":
            raise ValueError("the unified trainer conditions each latent token on its own state (projector linear or "
                             "mlp); the resampler needs whole spans, which packed rows may cut")
        if {"latent_dim", "tokens_per_latent"} & set(self.diffusion):
            raise ValueError("diffusion: latent_dim and tokens_per_latent come from the tokenizer, not the recipe")
        if self.freeze_backbone and not (self.init_from and self.diffusion_modalities):
            raise ValueError("freeze_backbone trains only diffusion heads on an existing run: set init_from and "
                             "heads.<modality>: diffusion or both")

    @property
    def diffusion_modalities(self) -> list[str]:
        return [m for m, kind in self.heads.items() if kind != "discrete"]


class UnifiedTask(TransformerTask):
    def __init__(self, cfg: UnifiedConfig, engine: Engine, shards):
        from unitok.data.packed import PackedBatches

        self.latent_tokenizers = {m: self._tokenizer(shards, m) for m in cfg.diffusion_modalities}
        model = cfg.model
        if self.latent_tokenizers:
            model = replace(model, heads={**(model.heads or {}), **{
                m: {"kind": "diffusion", **diffusion_head_spec(tok), **cfg.diffusion}
                for m, tok in self.latent_tokenizers.items()}})
        super().__init__(engine, model, shards.vocab, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                         optim=cfg.optim, init_from=cfg.init_from,
                         activation_checkpointing=cfg.activation_checkpointing, freeze_backbone=cfg.freeze_backbone)
        self.cfg, self.shards = cfg, shards
        # code ids whose next-token loss is off: the codes of modalities with only a diffusion head
        self.ce_off = [shards.vocab.code_range(m, lvl) for m, kind in cfg.heads.items() if kind == "diffusion"
                       for lvl in range(shards.vocab.codebooks[m].levels)]
        self.data = PackedBatches(shards, cfg.seq_len, cfg.batch_size, cfg.run.seed, cfg.eval_fraction,
                                  cfg.cond_dropout, cfg.bidirectional_images)
        w = torch.tensor([cfg.loss_weights.get(m, 1.0) for m in MODALITIES], dtype=torch.float32)
        self.weights = w.to(engine.device)

    # what the checkpoint holds
    def tokenizers(self) -> dict:
        d = self.shards.path / "tokenizers"
        return {t.name: t for t in sorted(d.iterdir())} if d.is_dir() else {}

    @staticmethod
    def _tokenizer(shards, m: str):
        from unitok.tokenizers.base import load_tokenizer

        d = shards.path / "tokenizers" / m
        if not d.is_dir():
            raise ConfigError(f"heads.{m}: the shards {shards.path} have no {m} tokenizer (no {m} data)")
        return load_tokenizer(d)

    def extra_state(self) -> dict:
        return {"cond_dropout": self.cfg.cond_dropout, "shards_vocab_hash": self.shards.vocab.hash,
                "policy": self.shards.stats.get("policy"),  # how media were sized: generation prompts match it
                "heads": {m: self.cfg.heads.get(m, "discrete") for m in self.shards.vocab.codebooks}}

    @torch.no_grad()
    def latent_targets(self, targets: torch.Tensor, key: tuple = (), rank: int = 0) -> dict:
        """{modality: (rows, cols, z0, draws)} for the diffusion heads: every latent token whose first
        code is the target at (row, col) (so the state there conditions it) and whose L level codes all
        lie in the row; z0 (M, D) its dequantized latent; its noise, timestep and condition dropout drawn
        for the global batch from (seed, `key`) and taken at the token's global row (this rank's rows
        start at rank * rows), so every number of ranks trains on the same draws."""
        v, dev = self.shards.vocab, self.engine.device
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.cfg.run.seed, *key]).generate_state(1)[0]))
        B, T = max(self.cfg.batch_size, targets.shape[0]), targets.shape[1]  # rows of the global batch
        out = {}
        for m, tok in sorted(self.latent_tokenizers.items()):
            head = self.model_cfg.diffusion_heads[m]
            L = v.codebooks[m].levels
            lo, hi = v.code_range(m, 0)
            rows, cols = ((targets >= lo) & (targets < hi)).nonzero(as_tuple=True)
            keep = cols + L <= T  # a frame cut by the row's end is left out
            rows, cols = rows[keep], cols[keep]
            codes = torch.stack([targets[rows, cols + lvl] - v.code_range(m, lvl)[0] for lvl in range(L)], 1)
            noise = torch.randn((B, T, head.latent_dim), generator=g)
            steps = torch.randint(0, head.train_steps, (B, T), generator=g)
            drop = torch.rand((B, T), generator=g) < head.cond_dropout
            at = (rows + rank * targets.shape[0], cols)
            draws = {"noise": noise[at].to(dev), "steps": steps[at].to(dev), "drop": drop[at].to(dev)}
            z0 = code_latents(tok, codes) if len(codes) else torch.zeros(0, head.latent_dim)
            out[m] = (rows.to(dev), cols.to(dev), z0.to(dev), draws)
        return out

    def _global_count(self, n: int) -> float:
        """The latent tokens of all ranks' batches (at least 1). Dividing each rank's sum by it, times
        the world size (DDP averages gradients), trains exactly as one process on the global batch."""
        if not self.engine.distributed:
            return max(n, 1)
        c = torch.tensor([float(n)], device=self.engine.device)
        torch.distributed.all_reduce(c)
        return max(float(c), 1.0)

    def data_state(self):
        return dict(self.data.state)

    def load_data_state(self, state) -> None:
        self.data.state = dict(state)

    # the step
    def _losses(self, b, model, z_loss: float | None = None, latents: dict | None = None) -> tuple[torch.Tensor, dict]:
        dev = self.engine.device
        with self.engine.autocast():
            out = model(b.ids.to(dev), b.targets.to(dev), doc_ids=b.doc_ids.to(dev),
                        span_ids=None if b.span_ids is None else b.span_ids.to(dev), reduction="none", z_loss=z_loss,
                        latents=latents)
        nll, diffusion = out if latents is not None else (out, {})
        nll = nll.float().view(-1)
        valid = (b.targets.view(-1) != -100).to(dev)
        mod = b.modality.view(-1).to(dev).clamp(0, 3)
        w = self.weights[mod] * valid
        t = b.targets.view(-1).to(dev)
        for lo, hi in self.ce_off:
            w = w * ~((t >= lo) & (t < hi))
        loss = (nll * w).sum() / w.sum().clamp_min(1e-9)
        if diffusion:  # each modality's mean over the global batch's latent tokens (see _global_count)
            diffusion = {m: d * self.engine.world / self._global_count(len(latents[m][0])) for m, d in diffusion.items()}
            loss = loss + self.cfg.diffusion_weight * sum(diffusion.values())
        sums = torch.zeros(4, device=dev).index_add_(0, mod, nll * valid)
        counts = torch.zeros(4, device=dev).index_add_(0, mod, valid.float())
        return loss, {"sums": sums.detach(), "counts": counts, "diffusion": {m: float(d.detach()) for m, d in diffusion.items()}}

    def forward_backward(self, scale: float) -> dict:
        key = tuple(self.data.state[k] for k in ("epoch", "pos", "offset"))  # the batch's place in the data
        b = self.data.next(self.engine.world, self.engine.rank)
        latents = self.latent_targets(b.targets, key, self.engine.rank) if self.latent_tokenizers else None
        loss, parts = self._losses(b, self.model_train, latents=latents)
        (loss * scale).backward()
        m = {"loss": float(loss.detach())}
        m.update({f"diffusion_{name}": d for name, d in parts["diffusion"].items()})
        for i, name in enumerate(MODALITIES):
            if parts["counts"][i] > 0:
                m[f"loss_{name}"] = float(parts["sums"][i] / parts["counts"][i])
        return m

    def end_step(self, step: int) -> dict:
        out = {"tokens": (step + 1) * self.tokens_per_step}
        if self.cfg.eval_every and (step + 1) % self.cfg.eval_every == 0:
            out.update(self.evaluate())
        return out

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss per modality: plain token NLLs (no z-loss), every held-out target once (every
        rank computes it: FSDP2 gathers weights collectively)."""
        batches = self.data.eval_batches(self.cfg.eval_batches)
        if not batches:
            return {}
        was = self.model.training
        self.model.eval()
        sums = torch.zeros(4, device=self.engine.device)
        counts = torch.zeros(4, device=self.engine.device)
        diffusion = {m: [0.0, 0] for m in self.latent_tokenizers}  # per modality: loss sum, latent tokens
        for i, b in enumerate(batches):
            # the held-out pass draws its noise from keys of its own (no epoch reaches 2**32 - 1): the same
            # every evaluation; every rank evaluates the whole batch (rank 0's rows)
            latents = self.latent_targets(b.targets, (2**32 - 1, i)) if diffusion else None
            _, parts = self._losses(b, self.model, z_loss=0.0, latents=latents)
            sums += parts["sums"]
            counts += parts["counts"]
            for m, d in parts["diffusion"].items():
                diffusion[m][0] += d * len(latents[m][0])
                diffusion[m][1] += len(latents[m][0])
        self.model.train(was)
        out = {"eval_loss": float(sums.sum() / counts.sum().clamp_min(1))}
        out.update({f"eval_diffusion_{m}": s / n for m, (s, n) in diffusion.items() if n})
        for i, name in enumerate(MODALITIES):
            if counts[i] > 0:
                out[f"eval_loss_{name}"] = float(sums[i] / counts[i])
        return out

    def baseline(self) -> dict:
        """Per modality: (targets, CE, CE_level) of the targets `evaluate` scores, under the add-one
        smoothed unigram of the training documents (`unigram_cross_entropy`)."""
        from unitok.data.shards import unigram_cross_entropy

        batches = self.data.eval_batches(self.cfg.eval_batches)
        if not batches:
            return {}
        return unigram_cross_entropy(self.shards, self.data.train_docs, torch.cat([b.targets.view(-1) for b in batches]),
                                     torch.cat([b.modality.view(-1) for b in batches]))

    def finish(self) -> dict:
        ev = self.evaluate()
        if ev:
            self.engine.history.append({"step": self.engine.step, "final_eval": True, **ev})
        return ev


def train_unified(cfg: UnifiedConfig, shards_dir, out, *, resume: bool = False, allow_recipe_change: bool = False,
                  progress: bool = True) -> tuple:
    from unitok.data.shards import read_shards

    shards = read_shards(shards_dir)
    out = Path(out)
    engine = Engine(cfg.run, cfg.optim, out, recipe=to_dict(cfg), resume=resume,
                    allow_recipe_change=allow_recipe_change, progress=progress, name="unified")
    if engine.resume_from is not None:
        saved = json.loads((engine.resume_from / "vocab.json").read_text())["hash"]
        if saved != shards.vocab.hash:
            raise VocabMismatchError(f"{engine.resume_from}: trained on shards with another vocabulary "
                                     f"({saved[:12]} vs {shards.vocab.hash[:12]})")
    task = UnifiedTask(cfg, engine, shards)
    if engine.main:
        out.mkdir(parents=True, exist_ok=True)
        held = int(sum(shards.offsets[i + 1] - shards.offsets[i] for i in task.data.eval_docs))
        cap = cfg.eval_batches * cfg.batch_size * cfg.seq_len
        print(f"unified: {task.model.num_params() / 1e6:.2f}M params, vocabulary {shards.vocab.size}, "
              f"{len(task.data.train_docs)} training / {len(task.data.eval_docs)} held-out documents ({held:,} tokens"
              + (f"; evaluated: about {cap:,} of them, raise eval_batches for all" if cap < held else "") + "); by kind: "
              + "; ".join(f"{k}: {r}" for k, r in task.data.split_report.items()), flush=True)
    summary = engine.fit(task)
    if engine.main:
        from unitok.data.shards import unigram_entropy

        ent = unigram_entropy(shards, task.data.train_docs)
        for m, (_, h, h_level) in ent.items():
            summary[f"unigram_entropy_{m}"], summary[f"unigram_entropy_level_{m}"] = h, h_level
        base = task.baseline()
        for m, (n, ce, ce_level) in base.items():
            summary[f"eval_targets_{m}"], summary[f"baseline_{m}"], summary[f"baseline_level_{m}"] = n, ce, ce_level
        summary.update({f"heldout_{k}": r for k, r in task.data.split_report.items()})
        plot_curves(engine.history, out / "loss.png", {m: b[2] for m, b in base.items()})
        write_card(task, summary, out / "checkpoint" / "README.md")
        (out / "summary.json").write_text(json.dumps(
            {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}, indent=1) + "\n")
    return task, summary


def versus_baseline(summary: dict, m: str) -> str:
    """Modality m's held-out loss beside its fair baselines, in words (summary keys). The baseline
    given the level is never above the other (fewer ids share the smoothing): it is the one to beat."""
    loss, ce, level = (summary[f"{k}_{m}"] for k in ("eval_loss", "baseline", "baseline_level"))
    return ("below both" if loss < level else "below the unigram baseline only, not given the level"
            if loss < ce else "NOT below the baseline")


def write_card(task: UnifiedTask, summary: dict, path: Path) -> None:
    st, v = task.shards.stats, task.shards.vocab
    nan = float("nan")
    rows = "\n".join(f"| {m} | {st['tokens_per_modality'].get(m, 0):,} | {summary.get(f'eval_targets_{m}', 0):,} | "
                     + " | ".join(f"{summary.get(f'{k}_{m}', nan):.3f}" for k in (
                         "eval_loss", "baseline", "baseline_level", "unigram_entropy", "unigram_entropy_level"))
                     + f" | {versus_baseline(summary, m) if f'baseline_{m}' in summary else '-'} |" for m in MODALITIES)
    held = "\n".join(f"- {k}: {summary[f'heldout_{k}']}" for k in MODALITIES if f"heldout_{k}" in summary)
    toks = "\n".join(f"- {m}: `{json.dumps(i)}`" for m, i in st.get("tokenizers", {}).items())
    heads = "; ".join(f"{m} {task.cfg.heads.get(m, 'discrete')}" + (
        f" (held-out diffusion loss {summary[f'eval_diffusion_{m}']:.4f})" if f"eval_diffusion_{m}" in summary else "")
        for m in v.codebooks) or "-"
    path.write_text(f"""# Unified model card

- parameters: {task.model.num_params():,}; config: `{json.dumps(task.model_config())}`
- vocabulary: {v.size} ids (hash {v.hash[:12]}); condition dropout {task.cfg.cond_dropout}
- output heads: {heads}
- data: {task.shards.path} ({st['documents']} documents, {st['tokens']:,} tokens); {summary['steps']} steps,
  {summary['minutes']} min

Held out (by document kind; every chunk or clip of a source on one side, text in blocks of
consecutive documents):
{held or '- nothing'}

Losses in nats/token. The baseline: the held-out targets' cross-entropy under the add-one-smoothed
unigram of the training targets (over the whole vocabulary; "given the level": among the ids of the
next code's residual level). The unigram entropy of the training tokens is a statistic of the
training data, not a baseline.

| modality | tokens in the shards | held-out targets | held-out loss | baseline | baseline given the level | unigram entropy of the training tokens | the same per residual level | held-out loss vs baseline |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Tokenizers:
{toks}
""")


def run_cli(args) -> int:
    cfg = load_config(UnifiedConfig, args.config, args.overrides)
    t0 = time.time()
    task, s = train_unified(cfg, args.data, args.out, resume=args.resume,
                            allow_recipe_change=args.allow_recipe_change)
    if task.engine.main:
        per = ", ".join(f"{m} {s[f'eval_loss_{m}']:.3f}" + (f" (baseline {s[f'baseline_{m}']:.3f}, per level "
                                                             f"{s[f'baseline_level_{m}']:.3f}: {versus_baseline(s, m)})"
                                                             if f"baseline_{m}" in s else "")
                        for m in MODALITIES if f"eval_loss_{m}" in s)
        print(f"step {s['steps']} in {(time.time() - t0) / 60:.1f} min; held-out loss per modality: {per or '-'} "
              f"-> {task.engine.ckpt_dir}")
    return 0
