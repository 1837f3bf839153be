"""The one interface every modality's tokenizer implements.

    tok = load_tokenizer("runs/img")           # any modality, from save_pretrained
    codes = tok.encode(x)                        # media -> int codes
    y = tok.decode(codes)                        # codes -> media
    tok.codebook_spec()                          # what the UnifiedVocab needs

Media tokenizers (image, video, audio) also expose the continuous latent the quantizer sees, so a
diffusion head can generate it and the same decoder render it:
    z = tok.latents(x)                  # media -> the quantizer's input (channel-first latent grid)
    codes = tok.quantize_latents(z)     # == tok.encode(x)
    zq = tok.dequantize(codes)          # the latent the decoder receives for those codes (shape of z)
    y = tok.decode_latents(zq)          # == tok.decode(codes); also takes a continuous z
`encode` and `decode` are these compositions, so the two paths cannot drift apart.

Code shapes (batched where the tokenizer takes a batch):
    text   list[int]
    image  (B, H', W')        or (B, L, H', W') for multi-level quantizers
    video  (B, T', H', W')    or (B, L, T', H', W')
    audio  (B, L, T')         L = RVQ levels in use (bandwidth)

A pretrained directory holds `config.json` (with a `"type"` key naming the
tokenizer class in `TOKENIZER_TYPES`) and, for neural tokenizers,
`model.safetensors`. Loading never unpickles anything.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from unitok.config import from_dict, to_dict
from unitok.errors import CheckpointError, read_json

__all__ = ["Tokenizer", "NeuralTokenizer", "load_tokenizer", "tokenizer_from_config", "read_tokenizer_config",
           "TOKENIZER_TYPES", "file_sha256"]

# type name -> "module:Class"; imported lazily so text-only users never import vision/audio code.
TOKENIZER_TYPES: dict[str, str] = {
    "text-sentencepiece": "unitok.tokenizers.text:TextTokenizer",
    "text-hf-tokenizer": "unitok.tokenizers.text:HFTextTokenizer",
    "image-vqgan": "unitok.tokenizers.image:ImageTokenizer",
    "image-vq-encoder": "unitok.tokenizers.image:ImageEncoderTokenizer",
    "image-emu3-vq": "unitok.tokenizers.emu3:Emu3ImageTokenizer",
    "video-vq3d": "unitok.tokenizers.video:VideoTokenizer",
    "audio-encodec": "unitok.tokenizers.audio:AudioTokenizer",
}

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class Tokenizer(ABC):
    """Common interface: encode, decode, codebook sizes, save/load."""

    type_name: ClassVar[str]  # key in TOKENIZER_TYPES
    modality: ClassVar[str]  # "text" | "image" | "video" | "audio"

    @abstractmethod
    def encode(self, x: Any) -> Any:
        """Media (or text) -> integer codes."""

    @abstractmethod
    def decode(self, codes: Any) -> Any:
        """Integer codes -> media (or text)."""

    @property
    @abstractmethod
    def codebook_sizes(self) -> list[int]:
        """Number of codes of each level (one entry for single-level quantizers)."""

    @property
    def codebook_size(self) -> int:
        return self.codebook_sizes[0]

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @abstractmethod
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json (+ weights) into `directory`."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, directory: str | Path) -> "Tokenizer":
        """Load what `save_pretrained` wrote."""

    def identity(self) -> dict:
        """What the vocabulary manifest records about this tokenizer."""
        return {"type": self.type_name}

    def codebook_spec(self):
        """The `CodebookSpec` of this tokenizer's codes (media tokenizers only)."""
        from unitok.vocab import CodebookSpec

        sizes = self.codebook_sizes
        if len(set(sizes)) != 1:
            raise ValueError(f"levels with different codebook sizes {sizes} are not supported by the vocabulary")
        return CodebookSpec(self.modality, sizes[0], len(sizes), self.identity())


class NeuralTokenizer(Tokenizer, nn.Module):
    """A tokenizer that is an `nn.Module` with a dataclass config.

    Subclasses set `config_class` and build themselves from `self.config`.
    `save_pretrained` writes the config and the weights (safetensors);
    `from_pretrained` reads them back with strict key checks.
    """

    config_class: ClassVar[type]
    # config keys renamed since a release: {old: new}; folders saved before the rename load as they are
    renamed_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = config

    # The latent interface of media tokenizers (see the module docstring); text has none.
    def latents(self, media: torch.Tensor) -> torch.Tensor:
        """Media -> the continuous latent the quantizer receives (after the encoder's own projections,
        before any low-dimensional lookup projection of the codebook)."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous latent")

    def quantize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> the codes `encode` gives for the media the latent came from."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous latent")

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes -> the latent the decoder receives for them (the shape `latents` returns)."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous latent")

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """A latent (quantized or continuous) -> media, through the decoder that renders codes."""
        raise NotImplementedError(f"{type(self).__name__} has no continuous latent")

    def save_pretrained(self, directory: str | Path) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(d / WEIGHTS_NAME), metadata={"type": self.type_name})
        (d / CONFIG_NAME).write_text(json.dumps({"type": self.type_name, **to_dict(self.config)}, indent=2) + "\n")
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "NeuralTokenizer":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        d = Path(directory)
        cfg = read_tokenizer_config(d, cls.type_name)
        model = cls(from_dict(cls.config_class, cls.upgrade_config(cfg), source=str(d / CONFIG_NAME)))
        wpath = d / WEIGHTS_NAME
        if not wpath.is_file():
            raise CheckpointError(f"{d}: no {WEIGHTS_NAME}")
        try:
            state = load_file(str(wpath), device=str(map_location))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{wpath}: corrupt weights file ({e})") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{wpath}: weights do not match the config "
                f"(missing {len(missing)}: {missing[:3]}, unexpected {len(unexpected)}: {unexpected[:3]})"
            )
        return model.eval()

    @classmethod
    def upgrade_config(cls, cfg: dict) -> dict:
        """A saved config with renamed keys under their current names."""
        return {cls.renamed_keys.get(k, k): v for k, v in cfg.items()}

    def identity(self) -> dict:
        """Type, config hash and weights hash: two tokenizers trained from one recipe differ."""
        cfg = json.dumps(to_dict(self.config), sort_keys=True).encode()
        return {"type": self.type_name, "config_sha256": hashlib.sha256(cfg).hexdigest()[:16],
                "weights_sha256": weights_sha256(self.state_dict())}


def weights_sha256(state: dict[str, torch.Tensor], n_hex: int = 16) -> str:
    """A hash of a state dict: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{v.dtype}:{tuple(v.shape)};".encode())
        h.update(v.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:n_hex]


def read_tokenizer_config(d: Path, expected_type: str | None = None) -> dict:
    """A saved tokenizer's config.json without its "type" (checked against `expected_type` if given)."""
    path = d / CONFIG_NAME
    if not d.is_dir():
        raise CheckpointError(f"pretrained tokenizer directory not found: {d}")
    if not path.is_file():
        raise CheckpointError(f"{d}: no {CONFIG_NAME}; is this a directory written by save_pretrained?")
    cfg = read_json(path, "tokenizer config")
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise CheckpointError(f"{path}: missing the 'type' key")
    t = cfg.pop("type")
    if expected_type is not None and t != expected_type:
        raise CheckpointError(f"{path}: holds a {t!r} tokenizer, not {expected_type!r}")
    return cfg


def _tokenizer_class(type_name, source) -> type:
    if type_name not in TOKENIZER_TYPES:
        raise CheckpointError(f"{source}: unknown tokenizer type {type_name!r}; known: {', '.join(TOKENIZER_TYPES)}")
    module, name = TOKENIZER_TYPES[type_name].split(":")
    return getattr(importlib.import_module(module), name)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load any tokenizer saved with `save_pretrained`, dispatching on its config's type."""
    d = Path(directory)
    path = d / CONFIG_NAME
    read_tokenizer_config(d)  # existence and JSON checks with clear errors
    return _tokenizer_class(json.loads(path.read_text())["type"], path).from_pretrained(d)


def tokenizer_from_config(config: dict, source: str = "config") -> "NeuralTokenizer":
    """An untrained neural tokenizer from what its `config.json` holds (`"type"` plus the config)."""
    config = dict(config)
    cls = _tokenizer_class(config.pop("type", None), source)
    return cls(from_dict(cls.config_class, cls.upgrade_config(config), source=source))


def file_sha256(path: str | Path, n_hex: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n_hex]
