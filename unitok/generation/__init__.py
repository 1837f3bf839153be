"""Generation: the sampler (KV cache, batched prompts, per-modality settings, grammar constraints,
classifier-free guidance), beam search, and the any-to-any pipeline to media files. See docs/generation.md."""

from unitok.generation.beam import beam_search
from unitok.generation.guidance import check_guidance, condition_dropout, unconditional_prompt
from unitok.generation.pipeline import TASKS, GenerationResult, Pipeline
from unitok.generation.sample import DEFAULTS, Sampling, filter_logits, generate, generate_batch

__all__ = ["generate", "generate_batch", "beam_search", "Sampling", "DEFAULTS", "filter_logits",
           "unconditional_prompt", "condition_dropout", "check_guidance", "Pipeline", "GenerationResult", "TASKS"]
