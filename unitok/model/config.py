"""The transformer's config dataclass and its named size presets.

One `ModelConfig` describes a `UnifiedTransformer`; it is stored (as JSON) in
every LM checkpoint. Presets are functions so a recipe can start from one and
override a few fields. Parameter counts include embeddings
(`UnifiedTransformer.num_params()` gives the exact figure for any vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from unitok.kernels import BACKENDS, CE_BACKENDS, NORM_BACKENDS, TRITON_HEAD_DIMS

__all__ = ["ModelConfig", "debug", "text", "small", "base", "PRESETS", "preset", "QK_NORM_TYPES", "ROPE_SCALING",
           "HEAD_KINDS", "ID_HEAD_KINDS", "check_rope_scaling", "check_heads"]

# QK-norm kinds, both applied to each head's queries and keys before RoPE. "rms": one RMSNorm over
# head_dim, its gain shared by the heads (Qwen3, unitok). "layernorm": a LayerNorm over head_dim with
# its own gain and bias per head, eps 1e-5 whatever norm_eps is (Chameleon's `ChameleonLayerNorm`).
QK_NORM_TYPES = ("rms", "layernorm")
# RoPE scalings: rope_type -> the keys its dict needs (the names of transformers' `rope_scaling`).
# "llama3" (Llama 3.1+): wavelengths longer than original_max_position_embeddings / low_freq_factor are
# stretched by `factor`, those shorter than original_max_position_embeddings / high_freq_factor kept, and
# the band between interpolated (unitok.model.transformer.rope_frequencies).
ROPE_SCALING = {"llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


# Per-modality heads (`ModelConfig.heads`): a modality's ids [start, start + size), the top of the id
# range, are embedded and predicted by modules of their own instead of tok_emb and lm_head. Kinds:
#   "mlp" (Janus's image generation): in, Embedding(size, code_dim), then Linear(code_dim, dim) and
#         in_layers - 1 times [GELU, Linear(dim, dim)]; out, Linear(dim, out_hidden), GELU,
#         Linear(out_hidden, size), read from the final-normed hidden state.
#   "diffusion" (unitok.model.diffusion_head): owns no ids. The backbone reads and lm_head predicts the
#         modality's codes as without heads; the head generates the tokenizer's continuous latent from the
#         hidden states at the span's positions. Its keys: DiffusionHeadConfig's fields (latent_dim required).
# Each kind is one key set below, with its module in unitok.model.transformer. One head per modality
# (a modality with an "mlp" head has no diffusion head yet).
HEAD_KINDS = {"mlp": ("start", "size", "code_dim", "in_layers", "out_hidden"), "diffusion": ()}
ID_HEAD_KINDS = ("mlp",)  # the kinds that own ids at the top of the id range


def _check_diffusion_head(m: str, h: dict) -> None:
    from dataclasses import fields

    from unitok.model.diffusion_head import DiffusionHeadConfig

    known = {f.name for f in fields(DiffusionHeadConfig)}
    rest = {k: v for k, v in h.items() if k != "kind"}
    if not set(rest) <= known or "latent_dim" not in rest:
        raise ValueError(f"head {m!r} (diffusion) takes latent_dim and optionally {', '.join(sorted(known - {'latent_dim'}))}; "
                         f"got {', '.join(sorted(h))}")
    try:
        DiffusionHeadConfig(**rest)
    except (TypeError, ValueError) as e:
        raise ValueError(f"head {m!r} (diffusion): {e}") from None


def check_heads(heads: Optional[dict], vocab_size: int) -> None:
    """ValueError (one line) unless `heads` is None or per-modality heads that tile the top of the id
    range, [vocab_size - sum of sizes, vocab_size), in order of their start."""
    if heads is None:
        return
    if not isinstance(heads, dict) or not heads:
        raise ValueError(f"heads must be a non-empty mapping of modality -> head, got {heads!r}")
    for m, h in heads.items():
        kind = h.get("kind") if isinstance(h, dict) else None
        if kind not in HEAD_KINDS:
            raise ValueError(f"head {m!r}: unknown kind {kind!r}; available: {', '.join(HEAD_KINDS)}")
        if kind == "diffusion":
            _check_diffusion_head(m, h)
    heads = {m: h for m, h in heads.items() if h["kind"] in ID_HEAD_KINDS}
    nxt = vocab_size - sum(h.get("size", 0) for h in heads.values())
    for m, h in sorted(heads.items(), key=lambda kv: kv[1].get("start", 0)):
        kind = h["kind"]
        keys = HEAD_KINDS[kind]
        if set(h) != {"kind", *keys}:
            raise ValueError(f"head {m!r} ({kind}) takes exactly the keys kind, {', '.join(keys)}; got {', '.join(sorted(h))}")
        if any(isinstance(h[k], bool) or not isinstance(h[k], int) or h[k] < (0 if k == "start" else 1) for k in keys):
            raise ValueError(f"head {m!r}: {', '.join(keys)} must be positive integers (start >= 0), got {h}")
        if h["start"] != nxt:
            raise ValueError(f"head {m!r} starts at id {h['start']}; the heads must tile the top of the ids, so it starts "
                             f"at {nxt}")
        nxt += h["size"]
    if nxt - sum(h["size"] for h in heads.values()) < 1:
        raise ValueError(f"the heads take all {vocab_size} ids; tok_emb needs at least one")


def check_rope_scaling(scaling: Optional[dict]) -> None:
    """ValueError (one line) unless `scaling` is None or a RoPE scaling this model computes."""
    if scaling is None:
        return
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING:
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: {', '.join(ROPE_SCALING)}; "
                         "or none)")
    keys = ROPE_SCALING[kind]
    if set(scaling) != {"rope_type", *keys}:
        raise ValueError(f"rope_scaling {kind!r} takes exactly the keys rope_type, {', '.join(keys)}; got "
                         f"{', '.join(sorted(scaling))}")
    for k in keys:
        if isinstance(scaling[k], bool) or not isinstance(scaling[k], (int, float)) or scaling[k] <= 0:
            raise ValueError(f"rope_scaling {k} must be a positive number, got {scaling[k]!r}")
    if kind == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
        raise ValueError("rope_scaling llama3 needs high_freq_factor > low_freq_factor")


@dataclass
class ModelConfig:
    vocab_size: int = 2048
    dim: int = 256
    n_layer: int = 6
    n_head: int = 8
    n_kv_head: Optional[int] = None  # None: = n_head (plain MHA); fewer heads: GQA
    ffn_hidden: Optional[int] = None  # None: ffn_mult * dim rounded up to ffn_multiple_of
    ffn_mult: float = 8 / 3  # SwiGLU with 8/3 * dim hidden costs what a 4 * dim GELU MLP costs
    ffn_multiple_of: int = 32
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    qk_norm: bool = True
    z_loss: float = 0.0  # weight of logsumexp(logits)**2 in the training loss (PaLM uses 1e-4)
    dropout: float = 0.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    attention: str = "sdpa"  # backend name for unitok.kernels.attention
    ce_backend: str = "torch"  # backend name for unitok.kernels.linear_cross_entropy
    norm_backend: str = "torch"  # backend name for unitok.kernels.rms_norm
    # Options that other model families need (unitok.interop imports them); the defaults are unitok's model.
    qk_norm_type: str = "rms"  # with qk_norm: "rms" or "layernorm" (see QK_NORM_TYPES)
    qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2)
    attn_head_dim: Optional[int] = None  # None: dim // n_head; set where heads are not dim / n_head wide (Qwen3)
    rope_scaling: Optional[dict] = None  # None: plain RoPE; {"rope_type": "llama3", ...} (see ROPE_SCALING)
    heads: Optional[dict] = None  # None: every id through tok_emb and lm_head; {modality: head} (see HEAD_KINDS)

    def __post_init__(self):
        if self.attn_head_dim is None and self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")
        if self.attn_head_dim is not None and self.attn_head_dim < 1:
            raise ValueError(f"attn_head_dim must be >= 1, got {self.attn_head_dim}")
        if self.head_dim % 2:
            raise ValueError(f"head dim {self.head_dim} must be even for RoPE")
        if self.qk_norm_type not in QK_NORM_TYPES:
            raise ValueError(f"unknown qk_norm_type {self.qk_norm_type!r}; available: {', '.join(QK_NORM_TYPES)}")
        check_rope_scaling(self.rope_scaling)
        check_heads(self.heads, self.vocab_size)
        if min(self.vocab_size, self.n_layer, self.max_seq_len) < 1:
            raise ValueError("vocab_size, n_layer and max_seq_len must be >= 1")
        for name, value, known in (("attention", self.attention, BACKENDS),
                                   ("ce_backend", self.ce_backend, CE_BACKENDS),
                                   ("norm_backend", self.norm_backend, NORM_BACKENDS)):
            if value not in known:
                raise ValueError(f"unknown {name} {value!r}; available: {', '.join(known)}")
        if self.attention == "triton" and self.head_dim not in TRITON_HEAD_DIMS:
            raise ValueError(f"attention 'triton' needs a head dim in {TRITON_HEAD_DIMS} (dim / n_head = "
                             f"{self.head_dim}); use 'auto' to fall back to sdpa")

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def embedding_rows(self) -> int:
        """Rows of tok_emb and lm_head: the ids below the per-modality heads (all, without heads)."""
        return self.vocab_size - sum(h["size"] for h in self.id_heads.values())

    @property
    def id_heads(self) -> dict:
        """The heads that own ids (embedded and predicted by their own modules), by modality."""
        return {m: h for m, h in (self.heads or {}).items() if h["kind"] in ID_HEAD_KINDS}

    @property
    def diffusion_heads(self) -> dict:
        """modality -> DiffusionHeadConfig of the diffusion heads."""
        from unitok.model.diffusion_head import DiffusionHeadConfig

        return {m: DiffusionHeadConfig(**{k: v for k, v in h.items() if k != "kind"})
                for m, h in (self.heads or {}).items() if h["kind"] == "diffusion"}

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head if self.attn_head_dim is None else self.attn_head_dim

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        h = int(self.ffn_mult * self.dim)
        return -(-h // self.ffn_multiple_of) * self.ffn_multiple_of


def debug(**kw) -> ModelConfig:
    """Tiny model for tests: 2 layers, dim 32, GQA 4/2 heads (41k params at vocab 512)."""
    return replace(ModelConfig(vocab_size=512, dim=32, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=64), **kw)


def text(**kw) -> ModelConfig:
    """Default text model, tuned for 10 CPU-minutes on ~1 MB of text (docs/log/lm.md): 4 layers,
    dim 128, 4 heads, context 128 (1.07M params with the 2,058-id vocabulary of text-lm.yaml)."""
    return replace(ModelConfig(dim=128, n_layer=4, n_head=4, max_seq_len=128, dropout=0.0), **kw)


def small(**kw) -> ModelConfig:
    """12 layers, dim 768, 12 heads, GQA 4 kv heads, context 2048, untied 32k vocabulary (126M params)."""
    return replace(ModelConfig(vocab_size=32768, dim=768, n_layer=12, n_head=12, n_kv_head=4,
                               max_seq_len=2048, tie_embeddings=False, z_loss=1e-4), **kw)


def base(**kw) -> ModelConfig:
    """24 layers, dim 1024, 16 heads, GQA 4 kv heads, context 4096, untied 32k vocabulary (333M params)."""
    return replace(ModelConfig(vocab_size=32768, dim=1024, n_layer=24, n_head=16, n_kv_head=4,
                               max_seq_len=4096, tie_embeddings=False, z_loss=1e-4), **kw)


def large(**kw) -> ModelConfig:
    """18 layers, dim 2048, 16 heads, GQA 8 kv heads, context 4096, untied 64k vocabulary (~1.1B params;
    the unified GPU preset, configs/train/unified-1b.yaml)."""
    return replace(ModelConfig(vocab_size=65536, dim=2048, n_layer=18, n_head=16, n_kv_head=8,
                               max_seq_len=4096, tie_embeddings=False, z_loss=1e-4), **kw)


PRESETS = {"debug": debug, "text": text, "small": small, "base": base, "large": large}


def preset(name: str, **kw) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name](**kw)
