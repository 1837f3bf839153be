"""unitok: unified discrete-token multimodal models."""

__version__ = "0.1.0"
