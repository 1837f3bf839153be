"""Tokenizers for every modality behind one interface (see `base.py`)."""

from unitok.tokenizers.base import NeuralTokenizer, Tokenizer, load_tokenizer

__all__ = ["Tokenizer", "NeuralTokenizer", "load_tokenizer"]
