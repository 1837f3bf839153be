"""The Llama family of transformers and our `UnifiedTransformer`, both ways: Llama, Qwen2, Qwen3, and
the language models of Chameleon, Emu3 and Janus.

They are one computation with options (transformers 5.25, `models/{llama,qwen2,qwen3,chameleon,emu3,janus}`):
pre-norm RMSNorm blocks, SwiGLU, GQA, RoPE on the two halves of each head (`rotate_half`, our
`apply_rope`), logits = lm_head(norm(h)). Their differences are `ModelConfig` options:

    family     q/k/v bias              QK-norm (before RoPE)                              head_dim default
    llama      attention_bias (+o)     none                                               hidden / heads
    qwen2      always (o_proj none)    none                                               hidden / heads
    qwen3      attention_bias (+o)     RMSNorm over head_dim, one gain                    128
    chameleon  attention_bias (+o)     LayerNorm over head_dim, gain and bias per head    hidden / heads
    emu3       attention_bias (+o)     none                                               hidden / heads
    janus      attention_bias (+o)     none                                               hidden / heads

Chameleon's `swin_norm` variant (norms after attention and feed-forward) is refused. Its
ForConditionalGeneration forward masks the image-token logits to the dtype's minimum; the `lm_head`
output, which ours equals, is before that mask. Its VQ model (`model.vqmodel.*`) is not read here
(`unitok.interop.chameleon`). Emu3 nests its language model's config in `text_config`
(`Family.text_config`) and names its weights otherwise: `text_model.model.*`, `text_model.lm_head`
and `vqmodel.*` in the files of its hub folder (transformers 5 renames them on loading and saving:
`conversion_mapping.py`), `model.text_model.*`, `lm_head`, `model.vqmodel.*` in memory; both are
read (`Family.renames`). Its residual dropout (attention_dropout) is off at inference. Janus's is a
Llama under `model.language_model.` in `text_config` (`unitok.interop.janus` for the rest).

An o_proj bias has no place in our model: one that is all zeros is dropped (our export writes
one where `attention_bias` must be on for the q/k/v biases), any other is refused. Weights map
name for name except two fused pairs: our `wkv` is [k_proj; v_proj] and `w13` is [gate_proj; up_proj]
(rows, in that order). Defaults of keys a config.json leaves out are those of transformers' config
classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from unitok.errors import CheckpointError
from unitok.model.config import ROPE_SCALING, ModelConfig

__all__ = ["FAMILIES", "ARCHITECTURES", "model_config", "hf_config", "shapes", "to_unitok", "to_hf"]


@dataclass(frozen=True)
class Family:
    architecture: str  # the transformers class a config.json names in "architectures"
    qk_norm: bool
    qkv_bias: bool | None  # None: from config.json's attention_bias
    head_dim: int | None  # default when config.json gives none (None: hidden_size // num_attention_heads)
    kv_heads: int | None  # default num_key_value_heads (None: num_attention_heads)
    max_positions: int
    bos: int | None
    eos: int | None
    qk_norm_type: str = "rms"
    norm_eps: float = 1e-6  # rms_norm_eps when config.json gives none
    theta: float = 10000.0  # rope_theta when config.json gives none
    text_config: bool = False  # the language model's keys are in config.json's text_config
    # name prefixes in the folder -> the Llama layout's (model.*, lm_head) and model.vqmodel.*; first match
    renames: tuple[tuple[str, str], ...] = ()


FAMILIES = {
    "llama": Family("LlamaForCausalLM", False, None, None, None, 2048, 1, 2),
    "qwen2": Family("Qwen2ForCausalLM", False, True, None, 32, 32768, None, None),
    "qwen3": Family("Qwen3ForCausalLM", True, None, 128, 32, 32768, None, None),
    "chameleon": Family("ChameleonForConditionalGeneration", True, None, None, 32, 4096, 1, 2, "layernorm", 1e-5),
    "emu3": Family("Emu3ForConditionalGeneration", False, None, None, 8, 9216, 151849, 151850, "rms", 1e-5, 1e6, True,
                   (("text_model.model.", "model."), ("text_model.lm_head.", "lm_head."), ("vqmodel.", "model.vqmodel."),
                    ("model.text_model.", "model."))),
    "janus": Family("JanusForConditionalGeneration", False, None, None, None, 2048, 1, 2, text_config=True,
                    renames=(("model.language_model.", "model."),)),
}
ARCHITECTURES = {f.architecture: name for name, f in FAMILIES.items()}

# our name in block i -> the transformers names (in model.layers.i.) whose rows it stacks
_BLOCK = {
    "attn_norm.weight": ("input_layernorm.weight",),
    "attn.wq.weight": ("self_attn.q_proj.weight",),
    "attn.wq.bias": ("self_attn.q_proj.bias",),
    "attn.wkv.weight": ("self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    "attn.wkv.bias": ("self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "attn.wo.weight": ("self_attn.o_proj.weight",),
    "attn.q_norm.weight": ("self_attn.q_norm.weight",),
    "attn.k_norm.weight": ("self_attn.k_norm.weight",),
    "attn.q_norm.bias": ("self_attn.q_norm.bias",),
    "attn.k_norm.bias": ("self_attn.k_norm.bias",),
    "ffn_norm.weight": ("post_attention_layernorm.weight",),
    "ffn.w13.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    "ffn.w2.weight": ("mlp.down_proj.weight",),
}
_TOP = {"tok_emb.weight": ("model.embed_tokens.weight",), "norm.weight": ("model.norm.weight",),
        "lm_head.weight": ("lm_head.weight",)}
_O_BIAS = re.compile(r"model\.layers\.\d+\.self_attn\.o_proj\.bias")
_INV_FREQ = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")  # a buffer older saves kept


def _names(ours: str) -> tuple[str, ...]:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", ours)
    if m:
        return tuple(f"model.layers.{m[1]}.{n}" for n in _BLOCK[m[2]])
    return _TOP[ours]


def shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Our parameter names and shapes for `cfg`, from a model built on the meta device (no memory)."""
    from unitok.model.transformer import UnifiedTransformer

    with torch.device("meta"):
        return {k: v.shape for k, v in UnifiedTransformer(cfg).state_dict().items()}


# ------------------------------------------------------------------ config.json -> ModelConfig
def model_config(hf: dict, family: str, source) -> ModelConfig:
    """The `ModelConfig` of a transformers config.json of `family`; CheckpointError (one line) for
    what our model cannot compute."""
    f = FAMILIES[family]

    def need(key):
        v = hf.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CheckpointError(f"{source}: config.json needs a positive integer {key}, got {v!r}")
        return v

    def refuse(why):
        return CheckpointError(f"{source}: cannot import this {family} model: {why}")

    dim, heads, layers = need("hidden_size"), need("num_attention_heads"), need("num_hidden_layers")
    if hf.get("hidden_act", "silu") != "silu":
        raise refuse(f"hidden_act {hf['hidden_act']!r} (our feed-forward is SwiGLU with silu)")
    if hf.get("mlp_bias"):
        raise refuse("mlp_bias (our feed-forward has no biases)")
    if hf.get("use_sliding_window") and "sliding_attention" in _layer_types(hf, layers):
        raise refuse("sliding-window attention layers (our attention is full causal)")
    if hf.get("swin_norm"):
        raise refuse("swin_norm (norms after attention and feed-forward; our blocks are pre-norm)")
    head_dim = hf.get("head_dim") or f.head_dim or dim // heads
    theta, scaling = _rope(hf, refuse, f.theta)
    try:
        return ModelConfig(
            vocab_size=need("vocab_size"), dim=dim, n_layer=layers, n_head=heads,
            n_kv_head=hf.get("num_key_value_heads") or f.kv_heads, ffn_hidden=need("intermediate_size"),
            max_seq_len=hf.get("max_position_embeddings", f.max_positions), rope_theta=float(theta),
            qk_norm=f.qk_norm, qk_norm_type=f.qk_norm_type, z_loss=0.0, dropout=0.0,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)), norm_eps=float(hf.get("rms_norm_eps", f.norm_eps)),
            qkv_bias=bool(hf.get("attention_bias", False)) if f.qkv_bias is None else f.qkv_bias,
            attn_head_dim=None if head_dim * heads == dim else head_dim, rope_scaling=scaling)
    except (TypeError, ValueError) as e:
        raise refuse(str(e)) from None


def _layer_types(hf: dict, layers: int) -> list[str]:
    """Qwen's attention kind per layer: config.json's layer_types, else sliding from max_window_layers."""
    if hf.get("layer_types"):
        return list(hf["layer_types"])
    first = hf.get("max_window_layers", 28)
    return ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]


def _rope(hf: dict, refuse, default_theta: float) -> tuple[float, dict | None]:
    """(theta, our rope_scaling) from transformers 5's rope_parameters or the older rope_theta +
    rope_scaling keys."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
        raise refuse("RoPE parameters per layer type")
    theta = params.get("rope_theta", hf.get("rope_theta", default_theta))
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise refuse("partial rotary embeddings (partial_rotary_factor)")
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind not in ROPE_SCALING:
        raise refuse(f"RoPE scaling {kind!r} (supported: {', '.join(ROPE_SCALING)}, or none)")
    known = {"rope_type", "type", "rope_theta", *ROPE_SCALING[kind]}
    if set(params) - known:
        raise refuse(f"RoPE scaling {kind!r} with keys {', '.join(sorted(set(params) - known))} we do not compute")
    scaling = {"rope_type": kind, **{k: params.get(k) for k in ROPE_SCALING[kind]}}
    if scaling.get("original_max_position_embeddings") is None:  # as transformers: the model's context
        scaling["original_max_position_embeddings"] = hf.get("max_position_embeddings")
    return theta, scaling


# ------------------------------------------------------------------ ModelConfig -> config.json
def hf_config(cfg: ModelConfig, vocab, dtype: torch.dtype) -> dict:
    """A transformers config.json for `cfg`: Qwen3 where it has QK-norm, Llama otherwise (both set
    attention_bias for q/k/v biases; `to_hf` writes the zero o_proj bias that implies). RoPE is written
    as rope_theta + rope_scaling, which transformers 4 and 5 both read. CheckpointError (one line)
    where no stock class computes the model."""
    if cfg.heads:
        raise CheckpointError(f"per-modality heads ({', '.join(cfg.heads)}: own input embedding and output head): no "
                              "stock causal-LM class computes them (export-hf writes Llama or Qwen3)")
    if cfg.qk_norm and cfg.qk_norm_type != "rms":
        raise CheckpointError(f"QK-norm {cfg.qk_norm_type!r} (a LayerNorm per head, as Chameleon's): no stock causal-LM "
                              "class computes it (export-hf writes Llama or Qwen3)")
    family = "qwen3" if cfg.qk_norm else "llama"
    if family == "llama" and cfg.dim % cfg.n_head:
        raise CheckpointError(f"hidden size {cfg.dim} is not a multiple of the {cfg.n_head} heads, which "
                              "transformers' LlamaConfig refuses (only Qwen3, for models with QK-norm, takes it)")
    out = {
        "architectures": [FAMILIES[family].architecture], "model_type": family,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta, "rope_scaling": None if cfg.rope_scaling is None else dict(cfg.rope_scaling),
        "attention_bias": cfg.qkv_bias, "attention_dropout": 0.0, "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": vocab.bos, "eos_token_id": vocab.eos, "pad_token_id": vocab.pad,
        "torch_dtype": str(dtype).removeprefix("torch."), "use_cache": True,
    }
    out.update({"mlp_bias": False} if family == "llama" else {"use_sliding_window": False})
    return out


# ------------------------------------------------------------------ weights
def to_unitok(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, source) -> dict[str, torch.Tensor]:
    """transformers' state dict -> ours, every tensor checked against the shape `cfg` implies."""
    out, used = {}, set()
    for ours, shape in shapes(cfg).items():
        parts = _names(ours)
        part_shape = (shape[0] // len(parts), *shape[1:])  # the fused pairs stack two equal blocks of rows
        for n in parts:
            if n not in hf_state:
                raise CheckpointError(f"{source}: the weights have no {n}, which config.json implies")
            if tuple(hf_state[n].shape) != part_shape:
                raise CheckpointError(f"{source}: {n} has shape {tuple(hf_state[n].shape)}, config.json implies "
                                      f"{part_shape}")
        used.update(parts)
        out[ours] = torch.cat([hf_state[n] for n in parts]) if len(parts) > 1 else hf_state[parts[0]]
    for n in sorted(set(hf_state) - used):
        if _INV_FREQ.fullmatch(n) or (n == "lm_head.weight" and cfg.tie_embeddings):
            continue  # recomputed / tied to the embedding, as transformers does
        if _O_BIAS.fullmatch(n):
            if hf_state[n].any():
                raise CheckpointError(f"{source}: {n} is not zero; our attention output has no bias")
            continue
        raise CheckpointError(f"{source}: unexpected tensor {n} for this config.json")
    return out


def to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers' names (the inverse of `to_unitok`), with the zero o_proj
    biases that attention_bias implies where the model has q/k/v biases."""
    out = {}
    for ours, t in state.items():
        parts = _names(ours)
        for n, piece in zip(parts, t.chunk(len(parts))):
            out[n] = piece.clone() if len(parts) > 1 else t.contiguous()  # no two views of one storage
        if ours.endswith("attn.wo.weight") and cfg.qkv_bias:
            out[parts[0].replace(".weight", ".bias")] = t.new_zeros(t.shape[0])
    return out
