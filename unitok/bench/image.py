"""The image and video tokenizer benchmark's protocol and classical baselines (JPEG, WebP); its
command is `unitok.apps.bench_image` (`unitok tokenizer bench`).

Protocol (images): every readable image is converted to RGB (grayscale replicated, alpha composited
on white); if its shorter side is under 256 it is resized (bicubic) so that side is 256; then it is
cut into the non-overlapping 256x256 tiles of a grid centred on the image (floor(H/256) x floor(W/256)
tiles, at most 16 per image, the central ones first). Every metric is the mean over tiles; codebook
usage (fraction of codes hit) and perplexity are over all tokens of all tiles.
bpp = tokens per tile x log2(codebook size) / 65536 (summed over levels for residual quantizers).
JPEG and WebP (Pillow; JPEG 4:2:0, default tables; WebP lossy, method 4) encode the *same* tiles,
each at the one quality (over all tiles) whose mean bpp is closest to the tokenizer's; bpp is the
file size in bits / 65536, headers included. If even quality 1 (JPEG) or 0 (WebP) exceeds the
tokenizer's rate, that is said in the `note`.

Video: the first `frames` frames of each video (every frame), resized so the shorter side is 256 and
centre-cropped to 256x256; metrics per frame, plus temporal consistency: the mean absolute
difference, in 8-bit levels, between consecutive-frame differences of reconstruction and original.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from unitok.data.media import SkipLog, list_media, read_image, read_video, to_tensor
from unitok.errors import DataError
from unitok.metrics import MS_SSIM_MIN_SIZE, ms_ssim, psnr, ssim

TILE = 256
MAX_TILES = 16
PROTOCOL = ("held-out images -> RGB, shorter side resized up to 256 if smaller, non-overlapping 256x256 tiles "
            "of a centred grid (max 16 per image); mean over tiles")


def image_tiles(img: np.ndarray, tile: int = TILE, max_tiles: int = MAX_TILES) -> list[np.ndarray]:
    """(H, W, 3) uint8 -> list of (tile, tile, 3) crops as described in the module docstring."""
    from PIL import Image

    h, w = img.shape[:2]
    if min(h, w) < tile:
        s = tile / min(h, w)
        nh, nw = max(tile, round(h * s)), max(tile, round(w * s))
        img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))
        h, w = img.shape[:2]
    ny, nx = h // tile, w // tile
    y0, x0 = (h - ny * tile) // 2, (w - nx * tile) // 2
    cells = sorted(((i, j) for i in range(ny) for j in range(nx)),
                   key=lambda c: (c[0] + 0.5 - ny / 2) ** 2 + (c[1] + 0.5 - nx / 2) ** 2)
    return [img[y0 + i * tile:y0 + (i + 1) * tile, x0 + j * tile:x0 + (j + 1) * tile] for i, j in cells[:max_tiles]]


# ---------------------------------------------------------------- classic codecs


def _codec_bytes(img: np.ndarray, codec: str, q: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if codec == "jpeg":
        Image.fromarray(img).save(buf, format="JPEG", quality=q, subsampling=2)
    else:
        Image.fromarray(img).save(buf, format="WEBP", quality=q, method=4)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BICUBIC))


def codec_at(tiles: list[np.ndarray], codec: str, q: int, metrics: bool = True, scale: int = 1) -> dict:
    """A classical codec at quality q; `scale` > 1 codes the image downscaled by that factor (bicubic)
    and upscales the decoded one (bicubic): the classical way to reach rates below a codec's floor.
    bpp counts bits per pixel of the full-size image."""
    sizes, ps, ss, ms = [], [], [], []
    for t in tiles:
        H, W = t.shape[:2]
        small = t if scale == 1 else _resize(t, (max(1, W // scale), max(1, H // scale)))
        data = _codec_bytes(small, codec, q)
        sizes.append(len(data) * 8 / (H * W))
        if metrics:
            r = _decode(data)
            if scale != 1:
                r = _resize(r, (W, H))
            ps.append(psnr(t, r))
            ss.append(ssim(t, r))
            if min(H, W) >= MS_SSIM_MIN_SIZE:
                ms.append(ms_ssim(t, r))
    out = {"quality": q, "bpp": float(np.mean(sizes))}
    if scale != 1:
        out["downscale"] = scale
    if metrics:
        out.update(psnr=float(np.mean(ps)), ssim=float(np.mean(ss)))
        if ms:
            out["ms_ssim"] = float(np.mean(ms))
    return out


def codec_matched(tiles: list[np.ndarray], codec: str, target_bpp: float, scale: int = 1,
                  at_or_below: bool = False) -> dict:
    """The quality whose mean bpp over `tiles` is closest to target_bpp (bpp rises with quality);
    `at_or_below`: the highest quality whose bpp does not exceed it, where there is one."""
    lo, hi = (1, 95) if codec == "jpeg" else (0, 100)
    cache: dict[int, float] = {}

    def bpp(q):
        if q not in cache:
            cache[q] = codec_at(tiles, codec, q, metrics=False, scale=scale)["bpp"]
        return cache[q]

    a, b = lo, hi
    while b - a > 1:  # largest q with bpp(q) <= target, by bisection
        m = (a + b) // 2
        a, b = (m, b) if bpp(m) <= target_bpp else (a, m)
    if bpp(b) <= target_bpp:  # only b == hi is never tried: every quality fits
        a = b
    best = min({a, b}, key=lambda q: abs(bpp(q) - target_bpp))
    if at_or_below and bpp(a) <= target_bpp:
        best = a
    res = codec_at(tiles, codec, best, scale=scale)
    floor = bpp(lo)
    if floor > target_bpp:
        res["note"] = (f"{codec.upper()}{f' at 1/{scale} size' if scale > 1 else ''} cannot reach "
                       f"{target_bpp:.4f} bpp: its lowest quality ({lo}) needs {floor:.4f} bpp on these tiles")
    return res


def classical_best(tiles: list[np.ndarray], target_bpp: float, extra=()) -> tuple[dict, list[dict]]:
    """JPEG and WebP at full size and downscaled by 2, 4 and 8, each at its highest quality at or below
    target_bpp (or its floor), and the `extra` candidates measured elsewhere on the same frames (the
    video bench's H.264 at the matched rate: name, psnr, ssim, bpp, quality); the best PSNR among those
    at or below the target. Returns (best, all candidates)."""
    cands = []
    for scale in (1, 2, 4, 8):
        for codec in ("jpeg", "webp"):
            r = codec_matched(tiles, codec, target_bpp, scale=scale, at_or_below=True)
            r["name"] = codec if scale == 1 else f"{codec}@1/{scale}"
            cands.append(r)
    cands += extra
    ok = [c for c in cands if c["bpp"] <= target_bpp * 1.0001]
    best = max(ok, key=lambda c: c["psnr"]) if ok else min(cands, key=lambda c: c["bpp"])
    return {k: best[k] for k in ("name", "psnr", "ssim", "bpp", "quality") if k in best} | \
        ({"ms_ssim": best["ms_ssim"]} if "ms_ssim" in best else {}) | \
        ({} if ok else {"note": "no classical setting reaches this rate; the lowest-rate one is shown"}), cands


# ---------------------------------------------------------------- codebook statistics, video clips


def level_stats(codes: torch.Tensor, size: int) -> tuple[list[float], list[float]]:
    """(usage, perplexity) per level of (L, N) codes."""
    usage, ppl = [], []
    for lv in codes:
        cnt = torch.bincount(lv.long(), minlength=size).float()
        p = cnt[cnt > 0] / cnt.sum()
        usage.append((cnt > 0).float().mean().item())
        ppl.append(torch.exp(-(p * p.log()).sum()).item())
    return usage, ppl


def levels_first(codes: torch.Tensor, levels: int) -> torch.Tensor:
    """Codes of a batch (B, [L,] ...) -> (L, N)."""
    if levels > 1:
        return codes.transpose(0, 1).flatten(1)
    return codes.reshape(1, -1)


@torch.no_grad()
def usage_sweep(tok, directory, min_tokens: int, seed: int = 0, batch: int = 16) -> dict:
    """Codebook usage over at least `min_tokens` tokens per level from `directory`: 256x256 crops of
    its images at scales 1, 3/4 and 1/2, on a 64-pixel grid, plain and mirrored (encode only), taken
    round-robin over the images (each image's crops in a seeded random order), so every image has
    an equal share as in training, however large it is. For usage and perplexity alone, where
    held-out tiles give too few tokens."""
    from PIL import Image

    skips = SkipLog()
    images, owner, names = [], [], []  # every scaled copy, the index of its file, file names
    for fi, p in enumerate(list_media(directory, "image", skips)):
        names.append(p.name)
        try:
            img = read_image(p)
        except DataError as e:
            skips.add(p, str(e).split(": ", 1)[-1])
            continue
        for scale in (1.0, 0.75, 0.5):
            h, w = round(img.shape[0] * scale), round(img.shape[1] * scale)
            if min(h, w) < TILE:
                continue
            images.append(np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC)) if scale != 1 else img)
            owner.append(fi)
    rng = np.random.default_rng(seed)
    per_file: dict[int, list] = {}
    for i, im in enumerate(images):
        per_file.setdefault(owner[i], []).extend(
            (i, y, x, flip) for y in range(0, im.shape[0] - TILE + 1, 64)
            for x in range(0, im.shape[1] - TILE + 1, 64) for flip in (False, True))
    queues = [[c[k] for k in rng.permutation(len(c))] for c in per_file.values()]
    crops = [q[j] for j in range(max(map(len, queues), default=0)) for q in queues if j < len(q)]  # round-robin
    per_crop = tok.num_tokens(TILE, TILE) // tok.num_levels
    chosen = crops[:-(-min_tokens // per_crop)]
    codes = []
    for b in range(0, len(chosen), batch):
        tiles = []
        for i, y, x, flip in chosen[b:b + batch]:
            t = images[i][y:y + TILE, x:x + TILE]
            tiles.append(t[:, ::-1] if flip else t)
        codes.append(levels_first(tok.encode(to_tensor(np.ascontiguousarray(np.stack(tiles)))), tok.num_levels))
    flat = torch.cat(codes, 1) if codes else torch.zeros(tok.num_levels, 0, dtype=torch.long)
    usage, ppl = level_stats(flat, tok.codebook_size)
    share: dict[str, int] = {}
    for i, *_ in chosen:
        share[names[owner[i]]] = share.get(names[owner[i]], 0) + 1
    return {"source": str(directory), "crops": len(chosen), "crops_available": len(crops), "crops_per_image": share,
            "tokens_per_level": int(flat.shape[1]), "enough": flat.shape[1] >= min_tokens,
            "codebook_usage": float(np.mean(usage)), "perplexity": float(np.mean(ppl)),
            "usage_per_level": usage, "perplexity_per_level": ppl,
            "protocol": "256x256 crops at scales 1, 3/4, 1/2 on a 64-px grid, plain and mirrored, round-robin over "
                        "the images (equal share each), seeded order within an image"}


def video_clip(path, frames: int) -> np.ndarray:
    from PIL import Image

    v = read_video(path, max_frames=frames)
    if v.shape[0] < frames:
        v = np.concatenate([v, np.repeat(v[-1:], frames - v.shape[0], 0)])
    out = []
    for f in v:
        h, w = f.shape[:2]
        s = TILE / min(h, w)
        im = Image.fromarray(f).resize((max(TILE, round(w * s)), max(TILE, round(h * s))), Image.BICUBIC)
        a = np.asarray(im)
        y0, x0 = (a.shape[0] - TILE) // 2, (a.shape[1] - TILE) // 2
        out.append(a[y0:y0 + TILE, x0:x0 + TILE])
    return np.stack(out)
