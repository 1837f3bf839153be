"""LPIPS-style perceptual loss (Zhang et al. 2018) from local weights only; nothing is downloaded.

`load_perceptual(path)` reads one .safetensors/.pt file holding a torchvision-layout VGG16
(`features.{0,2,5,...}.weight/bias`) and, optionally, LPIPS's linear heads (`lin0..lin4.model.1.weight`);
without the heads every layer weighs 1 (a plain normalised VGG feature distance).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unitok.errors import ConfigError

# VGG16 conv widths per stage; LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_STAGES = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class Perceptual(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for i, stage in enumerate(_STAGES):
            if i:
                layers.append(nn.MaxPool2d(2))
            for w in stage:
                layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU()]
                c = w
        self.features = nn.Sequential(*layers)
        self.taps = [i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU)
                     and (i + 1 == len(self.features) or isinstance(self.features[i + 1], nn.MaxPool2d))]
        self.lin = nn.ParameterList([nn.Parameter(torch.ones(1, w[-1], 1, 1)) for w in _STAGES])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (B,3,H,W) in [-1,1] -> (B,)
        h = torch.cat([a, b]).sub(self.shift).div(self.scale)
        out, k = 0.0, 0
        for i, m in enumerate(self.features):
            h = m(h)
            if i in self.taps:
                fa, fb = h.chunk(2)
                fa, fb = F.normalize(fa, dim=1, eps=1e-10), F.normalize(fb, dim=1, eps=1e-10)
                out = out + ((fa - fb) ** 2 * self.lin[k]).sum(1).mean((1, 2))
                k += 1
        return out


def load_perceptual(path: str | None) -> Perceptual:
    if not path:
        raise ConfigError("loss.perceptual > 0 needs loss.perceptual_weights: a local VGG16(+LPIPS) weights file "
                          "(weights are never downloaded)")
    from unitok.tokenizers.image import load_state_file

    if not Path(path).is_file():
        raise ConfigError(f"loss.perceptual_weights: file not found: {path} (weights are never downloaded)")
    state = load_state_file(path)
    m = Perceptual()
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    missing, _ = m.features.load_state_dict(feats, strict=False)
    if missing:
        raise ConfigError(f"{path}: not a VGG16 feature state dict (missing {missing[:3]})")
    for k in range(5):
        w = state.get(f"lin{k}.model.1.weight")
        if w is not None:
            m.lin[k].data.copy_(w.reshape_as(m.lin[k]))
    return m.eval()
