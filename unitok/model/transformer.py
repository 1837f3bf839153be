"""Llama-style decoder-only transformer over the unified vocabulary.

RMSNorm (pre-norm), RoPE (optionally Llama 3 scaled), SwiGLU, optional QK-norm (RMSNorm, or
Chameleon's per-head LayerNorm) and q/k/v biases, grouped-query attention: the computation of
transformers' Llama, Qwen2, Qwen3, Chameleon, Emu3 and Janus (`unitok.interop` maps their weights;
RoPE rotates the halves of each head, as their `rotate_half`). Optional per-modality heads
(`ModelConfig.heads`, Janus's image generation) embed and predict a modality's ids with modules of
their own: the logits are then [lm_head's | each head's], and the loss scores each target against
its own part (a text target over lm_head's logits, an image code over its head's), as Janus trains.
Attention goes through `unitok.kernels.attention`, the norms through
`unitok.kernels.rms_norm` and the loss through `unitok.kernels.linear_cross_entropy`,
so fused kernels plug in by backend name (`attention`, `norm_backend`, `ce_backend`).
Single-device code: parallelism is applied from outside.

    model = UnifiedTransformer(cfg)
    loss = model(ids, targets)                 # ids, targets: (B, T); -100 targets are skipped
    logits = model(ids)                        # (B, T, V)
    logits = model.logits(model.hidden(ids))   # the same
    cache = model.new_cache(B, max_len)
    logits = model(prompt, cache=cache, valid=valid)  # prefill; valid (B, T) False at left padding
    logits = model(next_ids[:, None], cache=cache)   # one-token decode steps
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from unitok.kernels import attention, linear_cross_entropy, rms_norm
from unitok.model.config import ROPE_SCALING, ModelConfig
from unitok.model.diffusion_head import DiffusionHead

__all__ = ["UnifiedTransformer", "KVCache", "RMSNorm", "doc_positions", "cached_attention"]


def doc_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, T) positions that restart at 0 where the id changes."""
    B, T = doc_ids.shape
    idx = torch.arange(T, device=doc_ids.device).expand(B, T)
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.cummax(torch.where(start, idx, torch.zeros_like(idx)), dim=1).values  # start index of each token's doc
    return idx - first


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """The (head_dim // 2,) angular frequencies in fp64, under `scaling` (`ModelConfig.rope_scaling`).

    "llama3" compares each wavelength 2 pi / f with the pretraining context L
    (original_max_position_embeddings): r = L f / (2 pi) wavelengths fit in it. Frequencies with
    r <= low_freq_factor are divided by `factor` (stretched to the longer context), those with
    r >= high_freq_factor kept, and between the two the result moves linearly in r from the first
    to the second."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if scaling is None:
        return inv
    factor, low, high, context = (scaling[k] for k in ROPE_SCALING["llama3"])
    keep = ((context * inv / (2 * math.pi) - low) / (high - low)).clamp(0, 1)  # 0: stretch, 1: keep
    return inv / factor * (1 - keep) + inv * keep


def rope_tables(head_dim: int, max_len: int, theta: float, scaling: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: (max_len, head_dim // 2) in fp32."""
    inv = rope_frequencies(head_dim, theta, scaling)
    ang = torch.outer(torch.arange(max_len, dtype=torch.float64), inv)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); cos/sin: (B or 1, 1, T, D/2). Rotates pairs (x[:D/2], x[D/2:])."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.type_as(x)


class KVCache:
    """Keys and values of every layer for generation: prefill once, then one token per step.

    k, v: (n_layer, B, Hkv, max_len, D); slots [0, pos) are filled, the same number in every row.
    Prompts of different lengths are left-padded: `valid` (B, max_len) is False at padding, no real
    token attends to a padding slot, and a row's RoPE positions count only its real tokens
    (`seen`, (B,)), so they start at 0 at its first real token as in training.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (cfg.n_layer, batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.valid = torch.ones(batch, max_len, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch, dtype=torch.long, device=device)  # real tokens per row so far
        self.padded = False  # some slot in [0, pos) is padding: attention needs a mask
        self.max_len = max_len
        self.pos = 0
        self.doc_ids = self.mask = None  # this forward's prefill doc ids / decode mask (set by `begin`)

    def begin(self, T: int, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Before a forward of T tokens per row: record which are real (valid (B, T) bool, None = all)
        and return their RoPE positions (B, T); also set the attention mask the layers read."""
        start, end = self.pos, self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache full: {start} + {T} > {self.max_len} tokens")
        if valid is None and T == 1 and start > 0 and not self.padded:  # the plain decode step
            pos = self.seen[:, None].clone()
            self.seen += 1
            self.mask = None
            return pos
        if valid is not None:
            valid = valid.to(device=self.valid.device, dtype=torch.bool)
            if start == 0 and bool((valid[:, 1:] < valid[:, :-1]).any()):
                raise ValueError("prompts must be left-padded: valid is False before a row's first real "
                                 "token and True after it")
            self.valid[:, start:end] = valid
            self.padded = self.padded or not bool(valid.all())
        real = self.valid[:, start:end].long()  # (B, T)
        pos = (self.seen[:, None] + real.cumsum(1) - 1).clamp(min=0)  # padding gets position 0 (masked anyway)
        self.seen += real.sum(1)
        if start == 0:  # prefill: causal attention; padding is a document of its own (doc 0), never seen
            self.doc_ids, self.mask = (real if self.padded else None), None
        elif self.padded or T > 1:  # queries [start, end) against keys [0, end)
            j = torch.arange(end, device=real.device)
            i = torch.arange(start, end, device=real.device)
            causal = j[None, :] <= i[:, None]  # (T, end)
            self_slot = j[None, :] == i[:, None]  # a padding query attends to itself: no empty softmax row
            self.mask = ((self.valid[:, None, :end] | self_slot) & causal)[:, None]  # (B, 1, T, end)
        else:
            self.mask = None
        return pos

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, Hkv, t, D) at the current position; return everything so far."""
        t = k.shape[2]
        if self.pos + t > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {t} > {self.max_len} tokens")
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        end = self.pos + t
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def grow(self, max_len: int) -> None:
        """Make room for `max_len` slots in all (the filled ones are kept)."""
        if max_len <= self.max_len:
            return
        n, B, H, _, D = self.k.shape
        k = self.k.new_zeros(n, B, H, max_len, D)
        v = self.v.new_zeros(n, B, H, max_len, D)
        valid = self.valid.new_ones(B, max_len)
        k[:, :, :, :self.pos], v[:, :, :, :self.pos] = self.k[:, :, :, :self.pos], self.v[:, :, :, :self.pos]
        valid[:, :self.pos] = self.valid[:, :self.pos]
        self.k, self.v, self.valid, self.max_len = k, v, valid, max_len

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index` (B',) in that order, e.g. the surviving hypotheses of a beam search."""
        self.k, self.v = self.k[:, index], self.v[:, index]
        self.valid, self.seen = self.valid[index], self.seen[index]

    def load_row(self, row: int, src: "KVCache") -> None:
        """Replace row `row` by the one-row cache `src` (its n tokens right-aligned at slots
        [pos - n, pos), the slots before them padding): a row's sequence changes mid-generation,
        e.g. classifier-free guidance rebuilding the unconditional stream when a span opens."""
        n = src.pos
        if n > self.pos or src.k.shape[1] != 1:
            raise ValueError(f"load_row needs a one-row cache of at most {self.pos} tokens, got {n}")
        lo = self.pos - n
        self.k[:, row, :, lo:self.pos] = src.k[:, 0, :, :n]
        self.v[:, row, :, lo:self.pos] = src.v[:, 0, :, :n]
        self.valid[row, :lo] = False
        self.valid[row, lo:self.pos] = src.valid[0, :n]
        self.seen[row] = src.seen[0]
        self.padded = self.padded or lo > 0 or not bool(src.valid[0, :n].all())


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q: (B, Hq, T, D) against cached k, v: (B, Hkv, L, D); mask None (every key) or (B, 1, T, L) bool.

    The query heads that share a kv head are folded into the query length, (B, Hkv, g*T, D), so the
    cache is read in place instead of being repeated g times per step. A few query rows against the
    cache are not a flash-attention workload: plain SDPA.
    """
    B, Hq, T, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    g = Hq // Hkv
    q = q.reshape(B, Hkv, g * T, D)  # head h uses kv head h // g, as repeat_interleave does
    if mask is not None and g > 1:
        mask = mask[:, :, None].expand(B, 1, g, T, L).reshape(B, 1, g * T, L)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).view(B, Hq, T, D)


class RMSNorm(nn.Module):
    """RMSNorm with `nn.RMSNorm`'s parameter (`weight`), computed by `unitok.kernels.rms_norm`."""

    def __init__(self, dim: int, eps: float, backend: str = "torch"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps, self.backend = eps, backend

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, backend={self.backend!r}"


class HeadLayerNorm(nn.Module):
    """LayerNorm over head_dim with a gain and bias per head: weight, bias (heads, head_dim), as
    transformers' `ChameleonLayerNorm` (whose statistics are per head, eps 1e-5)."""

    eps = 1e-5

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(heads, head_dim))

    def forward(self, x):  # (B, H, T, D)
        y = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return y * self.weight[:, None] + self.bias[:, None]


def _qk_norm(cfg: ModelConfig, heads: int) -> nn.Module:
    if not cfg.qk_norm:
        return nn.Identity()
    if cfg.qk_norm_type == "layernorm":
        return HeadLayerNorm(heads, cfg.head_dim)
    return RMSNorm(cfg.head_dim, cfg.norm_eps, cfg.norm_backend)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_head * hd, bias=cfg.qkv_bias)
        self.wkv = nn.Linear(cfg.dim, 2 * cfg.kv_heads * hd, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_head * hd, cfg.dim, bias=False)
        self.q_norm, self.k_norm = _qk_norm(cfg, cfg.n_head), _qk_norm(cfg, cfg.kv_heads)  # before RoPE

    def forward(self, x, cos, sin, doc_ids=None, span_ids=None, cache: KVCache | None = None, layer: int = 0):
        B, T, _ = x.shape
        cfg = self.cfg
        q = self.wq(x).view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)  # (B, Hq, T, D)
        k, v = self.wkv(x).view(B, T, 2, cfg.kv_heads, cfg.head_dim).permute(2, 0, 3, 1, 4)  # 2 x (B, Hkv, T, D)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Under autocast the norms and RoPE return fp32 while v stays bf16; the kernels want one dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)
        if cache is None:
            y = attention(q, k, v, causal=True, doc_ids=doc_ids, span_ids=span_ids, backend=cfg.attention)
        else:
            first = cache.pos == 0
            k, v = cache.update(layer, k, v)
            if first:  # prefill: causal attention over the prompts (left padding as a document of its own)
                y = attention(q, k, v, causal=True, doc_ids=cache.doc_ids, backend=cfg.attention)
            else:  # decode: the new queries see the whole cache (mask: padding, and causal when T > 1)
                y = cached_attention(q, k, v, cache.mask)
        y = y.transpose(1, 2).reshape(B, T, cfg.n_head * cfg.head_dim)
        return self.wo(y)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), w1 and w3 fused into one matmul."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w13 = nn.Linear(cfg.dim, 2 * cfg.hidden_dim, bias=False)
        self.w2 = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)

    def forward(self, x):
        a, b = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_backend)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_backend)
        self.ffn = FeedForward(cfg)
        self.dropout = cfg.dropout

    def forward(self, x, cos, sin, doc_ids=None, span_ids=None, cache=None, layer=0):
        h = self.attn(self.attn_norm(x), cos, sin, doc_ids, span_ids, cache, layer)
        x = x + F.dropout(h, self.dropout, self.training)
        h = self.ffn(self.ffn_norm(x))
        return x + F.dropout(h, self.dropout, self.training)


class ModalityHead(nn.Module):
    """The "mlp" head of one modality (`HEAD_KINDS`): its ids [start, start + size) in through
    `embed` and `aligner`, their logits out through `proj` and `out` (Janus: generation_embeddings,
    generation_aligner, generation_head)."""

    def __init__(self, spec: dict, dim: int):
        super().__init__()
        self.start, self.size = spec["start"], spec["size"]
        self.embed = nn.Embedding(self.size, spec["code_dim"])
        self.aligner = nn.ModuleList([nn.Linear(spec["code_dim"], dim)] +
                                     [nn.Linear(dim, dim) for _ in range(spec["in_layers"] - 1)])
        self.proj = nn.Linear(dim, spec["out_hidden"])
        self.out = nn.Linear(spec["out_hidden"], self.size)

    def inputs(self, codes: torch.Tensor) -> torch.Tensor:  # (N,) codes in [0, size) -> (N, dim)
        x = self.aligner[0](self.embed(codes))
        for layer in self.aligner[1:]:
            x = layer(F.gelu(x))
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., size)
        return self.out(F.gelu(self.proj(h)))


class UnifiedTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        rows = cfg.embedding_rows
        self.tok_emb = nn.Embedding(rows, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, cfg.norm_backend)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, rows, bias=False)
        if cfg.id_heads:  # in order of their ids (the logits' order)
            specs = sorted(cfg.id_heads.items(), key=lambda kv: kv[1]["start"])
            self.heads = nn.ModuleDict({m: ModalityHead(spec, cfg.dim) for m, spec in specs})
        if cfg.diffusion_heads:  # continuous-latent heads read the final-normed hidden states
            self.diffusion = nn.ModuleDict({m: DiffusionHead(c, cfg.dim) for m, c in cfg.diffusion_heads.items()})
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_scaling)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        """Normal(0, 0.02) weights; residual output projections scaled by 1/sqrt(2 n_layer) (GPT-2);
        biases (qkv_bias, the per-head QK-norm's) zero."""
        out_std = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)
            if p.dim() < 2 or name.endswith(("q_norm.weight", "k_norm.weight")):
                continue  # norm gains keep their ones (a per-head QK-norm's are (heads, head_dim))
            nn.init.normal_(p, std=out_std if name.endswith(("wo.weight", "w2.weight")) else 0.02)
        for head in getattr(self, "diffusion", {}).values():
            head.reset_parameters()

    @property
    def output_weight(self) -> torch.Tensor:
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def num_params(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if embeddings else n - self.tok_emb.weight.numel()

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.cfg, batch, max_len or self.cfg.max_seq_len, device=p.device, dtype=p.dtype)

    def hidden(self, ids, doc_ids=None, span_ids=None, cache: KVCache | None = None,
               valid: torch.Tensor | None = None) -> torch.Tensor:
        """ids: (B, T) -> final-normed hidden states (B, T, dim).

        valid: (B, T) bool, False at left padding (prompts of different lengths in one batch): padding
        is never attended to and each row's positions start at 0 at its first real token."""
        B, T = ids.shape
        start = 0 if cache is None else cache.pos
        # With a cache, slots may outnumber positions (padding, finished rows fed as padding): the
        # positions are checked then, only past max_seq_len slots (one host sync).
        n = start + T
        if n > self.cfg.max_seq_len and cache is not None:
            n = int(cache.seen.max()) + T
        if n > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {n} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        if valid is not None and cache is None:
            if doc_ids is not None:
                raise ValueError("pass doc_ids or valid, not both")
            doc_ids = valid.long()  # padding and real tokens as two documents: the same masks and positions
        if cache is not None:
            if doc_ids is not None:
                raise ValueError("doc_ids are for packed training sequences, not cached generation")
            pos = cache.begin(T, valid)  # (B, T): per-row positions that skip left padding
            cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]  # (B, 1, T, D/2)
        elif doc_ids is not None:
            pos = doc_positions(doc_ids)  # (B, T): RoPE restarts in every packed document
            cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]  # (B, 1, T, D/2)
        else:
            cos, sin = self.rope_cos[:T][None, None], self.rope_sin[:T][None, None]
        x = self.embed(ids)  # (B, T, dim)
        x = F.dropout(x, self.cfg.dropout, self.training)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, doc_ids, span_ids, cache, i)
        if cache is not None:
            cache.pos += T
        return self.norm(x)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, dim) input vectors: tok_emb's, and each per-modality head's for its ids."""
        if not self.cfg.id_heads:
            return self.tok_emb(ids)
        x = self.tok_emb(ids.clamp(max=self.tok_emb.num_embeddings - 1))  # a head's ids replaced below
        for head in self.heads.values():
            where = ((ids >= head.start) & (ids < head.start + head.size)).nonzero(as_tuple=True)
            x = x.index_put(where, head.inputs(ids[where] - head.start).to(x.dtype))  # bf16 under autocast
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (..., dim) -> logits (..., V) in fp32: lm_head's, then each head's."""
        out = h @ self.output_weight.t()
        if self.cfg.id_heads:
            out = torch.cat([out, *(head.logits(h) for head in self.heads.values())], dim=-1)
        return out.float()

    def _head_loss(self, h, targets, reduction: str, z_loss: float):
        """The loss with per-modality heads: each target scored by the softmax of its own part of the
        logits (ids below the heads: lm_head's; a head's ids: that head's), z-loss on that part."""
        h, t = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
        valid = t != -100
        loss = h.new_zeros(t.shape, dtype=torch.float32)
        parts = [(0, self.tok_emb.num_embeddings, lambda x: x @ self.output_weight.t())]
        parts += [(head.start, head.start + head.size, head.logits) for head in self.heads.values()]
        for lo, hi, part in parts:
            rows = (valid & (t >= lo) & (t < hi)).nonzero(as_tuple=True)[0]
            logits = part(h[rows]).float()
            nll = F.cross_entropy(logits, t[rows] - lo, reduction="none")
            if z_loss:
                nll = nll + z_loss * torch.logsumexp(logits, -1).pow(2)
            loss = loss.index_put((rows,), nll)
        if reduction == "none":
            return loss
        return loss.sum() if reduction == "sum" else loss.sum() / valid.sum().clamp(min=1)

    def forward(self, ids, targets=None, doc_ids=None, span_ids=None, cache: KVCache | None = None,
                reduction: str = "mean", z_loss: float | None = None, valid: torch.Tensor | None = None,
                latents: dict | None = None):
        """Without targets: logits (B, T, V) in fp32. With targets (B, T): the loss
        (mean over non-ignored tokens, plus z-loss; `reduction="sum"`/`"none"` and
        `z_loss=0` give plain token NLLs for evaluation). `valid`: see `hidden`.
        `latents` {modality: (rows, cols, z0, draws)}: the diffusion heads' targets, z0 (M, D) latent
        tokens conditioned on the hidden states at (rows, cols) (M,) each, and their random draws
        (`DiffusionHead.loss`: noise (M, D), steps (M,), drop (M,); None: drawn by the head); then
        (loss, {modality: the sum over its M tokens of their diffusion losses}) is returned (the
        caller divides by its token count). Inside forward so that DDP and FSDP see the heads'
        parameters used."""
        h = self.hidden(ids, doc_ids, span_ids, cache, valid)
        if targets is None:
            return self.logits(h)
        loss = self._token_loss(h, targets, reduction, z_loss)
        if latents is None:
            return loss
        return loss, {m: self._diffusion_loss(m, h, *t) for m, t in latents.items()}

    def _diffusion_loss(self, m, h, rows, cols, z0, draws=None):
        head = self.diffusion[m]
        if not len(rows):  # no latent token in this batch: a zero that still touches every head
            return sum(p.sum() for p in head.parameters()) * 0.0  # parameter (DDP expects their gradients)
        # per-token conditions: each latent token a span of one (condition dropout per token)
        if draws is not None:
            draws = {"noise": draws["noise"][:, None], "steps": draws["steps"][:, None], "drop": draws["drop"]}
        return head.loss(h[rows, cols][:, None], z0[:, None], draws=draws, reduction="sum")

    def _token_loss(self, h, targets, reduction, z_loss):
        if self.cfg.id_heads:
            return self._head_loss(h, targets, reduction, self.cfg.z_loss if z_loss is None else z_loss)
        return linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.output_weight, targets.reshape(-1),
                                    ignore_index=-100, z_loss=self.cfg.z_loss if z_loss is None else z_loss,
                                    reduction=reduction, backend=self.cfg.ce_backend)
