"""Random training crops of image folders and clips of video folders (tokenizer training).

    sampler = ImageCropSampler("photos/", CropConfig(crop=64, batch_size=16), seed=0)
    x = sampler.batch()               # (16, 3, 64, 64) in [-1, 1]
    x = sampler.batch(world=2, rank=1)  # the second half of the same global batch

Unreadable files are skipped and counted in `sampler.skips`; decoded files are cached in memory.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unitok.data.media import SkipLog, list_media, read_image, read_video, to_tensor
from unitok.errors import DataError

__all__ = ["CropConfig", "ImageCropSampler", "VideoClipSampler"]


@dataclass
class CropConfig:
    crop: int = 64  # square training crops (pixels)
    batch_size: int = 16  # per optimizer step, over all ranks
    min_scale: float = 0.5  # random downscale in [min_scale, 1] before cropping (1 = none)
    flip: bool = True
    color_aug: float = 0.0  # probability per crop of a random channel permutation or grey conversion
    frames: int = 9  # video: frames per clip (1 + 4k for temporal compression 4)
    frame_stride: int = 2  # video: take every n-th frame
    cache_mb: int = 2048  # decoded-file cache




class _Cache:
    def __init__(self, paths, reader, budget_mb: int, skips: SkipLog):
        self.paths, self.reader, self.skips = list(paths), reader, skips
        self.budget, self.used, self.mem, self.bad = budget_mb << 20, 0, {}, set()

    def get(self, rng: random.Random) -> np.ndarray:
        for _ in range(100 + 10 * len(self.paths)):
            i = rng.randrange(len(self.paths))
            if i in self.bad:
                continue
            if i in self.mem:
                return self.mem[i]
            try:
                arr = self.reader(self.paths[i])
            except DataError as e:
                self.bad.add(i)
                self.skips.add(self.paths[i], str(e).split(": ", 1)[-1])
                continue
            if self.used + arr.nbytes <= self.budget:
                self.mem[i], self.used = arr, self.used + arr.nbytes
            return arr
        raise DataError(f"no readable files among {len(self.paths)} ({self.skips.summary()})")


def _random_crop(x: torch.Tensor, crop: int, min_scale: float, flip: bool, rng: random.Random) -> torch.Tensor:
    """x (..., 3, H, W) float -> (..., 3, crop, crop): random downscale, crop, horizontal flip."""
    H, W = x.shape[-2:]
    smax = 1.0 if min(H, W) >= crop else crop / min(H, W)  # upscale small images
    smin = max(min_scale, crop / min(H, W)) if min_scale < 1 else smax
    s = math.exp(rng.uniform(math.log(min(smin, smax)), math.log(max(smin, smax))))
    size = min(H, W, max(crop, round(crop / s))) if s <= 1 else max(1, round(crop / s))
    y0, x0 = rng.randint(0, H - size), rng.randint(0, W - size)
    patch = x[..., y0:y0 + size, x0:x0 + size]
    if size != crop:
        lead = patch.shape[:-3]
        patch = F.interpolate(patch.reshape(-1, *patch.shape[-3:]), size=(crop, crop), mode="bilinear",
                              antialias=size > crop, align_corners=False).reshape(*lead, 3, crop, crop)
    if flip and rng.random() < 0.5:
        patch = patch.flip(-1)
    return patch


def _color(x: torch.Tensor, p: float, rng: random.Random) -> torch.Tensor:
    """With probability p: grey (1/3 of the time) or a random RGB channel permutation. x (..., 3, H, W)."""
    if p <= 0 or rng.random() >= p:
        return x
    if rng.random() < 1 / 3:
        g = (0.299 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :])
        return g.expand_as(x).contiguous()
    perm = [0, 1, 2]
    rng.shuffle(perm)
    return x[..., perm, :, :]


class ImageCropSampler:
    """Endless batches (B, 3, crop, crop) in [-1, 1] of random crops of random images in a folder.
    `batch(world, rank)` draws the global batch from one seeded stream and returns this rank's slice."""

    def __init__(self, directory, cfg: CropConfig, seed: int = 0):
        self.cfg, self.rng, self.skips = cfg, random.Random(seed), SkipLog()
        paths = list_media(directory, "image")
        if not paths:
            raise DataError(f"{directory}: no image files ({', '.join(sorted({'.png', '.jpg', '.webp'}))} ...)")
        self.cache = _Cache(paths, read_image, cfg.cache_mb, self.skips)

    def batch(self, world: int = 1, rank: int = 0) -> torch.Tensor:
        c = self.cfg
        crops = [_color(_random_crop(to_tensor(self.cache.get(self.rng)), c.crop, c.min_scale, c.flip, self.rng),
                        c.color_aug, self.rng) for _ in range(c.batch_size)]
        n = c.batch_size // world
        return torch.stack(crops[rank * n:(rank + 1) * n])


class VideoClipSampler:
    """Endless batches (B, 3, T, crop, crop) of random clips of random videos in a folder (global
    batch sliced per rank, as ImageCropSampler)."""

    def __init__(self, directory, cfg: CropConfig, seed: int = 0):
        self.cfg, self.rng, self.skips = cfg, random.Random(seed), SkipLog()
        paths = list_media(directory, "video")
        if not paths:
            raise DataError(f"{directory}: no video files")
        need = cfg.frames * 40  # read a window of frames per video (cached)
        self.cache = _Cache(paths, lambda p: read_video(p, max_frames=need, stride=cfg.frame_stride),
                            cfg.cache_mb, self.skips)

    def batch(self, world: int = 1, rank: int = 0) -> torch.Tensor:
        c, out = self.cfg, []
        for _ in range(c.batch_size):
            v = self.cache.get(self.rng)  # (T, H, W, 3)
            T = v.shape[0]
            t0 = self.rng.randint(0, max(0, T - c.frames))
            clip = v[t0:t0 + c.frames]
            if clip.shape[0] < c.frames:  # pad short videos with their last frame
                clip = np.concatenate([clip, np.repeat(clip[-1:], c.frames - clip.shape[0], 0)])
            x = to_tensor(clip)  # (T, 3, H, W)
            out.append(_random_crop(x, c.crop, c.min_scale, c.flip, self.rng).transpose(0, 1))  # (3, T, c, c)
        n = c.batch_size // world
        return torch.stack(out[rank * n:(rank + 1) * n])
