"""Codebook reconstruction benchmark for image and video tokenizers, next to JPEG and WebP.

    unitok tokenizer bench OUT/final --data HELD_OUT_DIR --json bench.json [--out DIR] [--max-files N]

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

rFID needs Inception weights and is always skipped with a note (none are shipped). LPIPS is
reported when UNITOK_LPIPS_WEIGHTS names a local VGG16(+LPIPS) weights file.
"""

from __future__ import annotations

import io
import math
import sys
import os
import time
from pathlib import Path

import numpy as np
import torch

from unitok.bench.common import markdown_table, write_json
from unitok.bench.h264 import video_fps
from unitok.data.media import MIN_IMAGE_SIDE, SkipLog, list_media, read_image, read_video, save_grid, to_tensor, to_uint8
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


def classical_best(tiles: list[np.ndarray], target_bpp: float) -> tuple[dict, list[dict]]:
    """JPEG and WebP at full size and downscaled by 2, 4 and 8, each at its highest quality at or below
    target_bpp (or its floor); the best PSNR among those at or below the target. Returns (best, all candidates)."""
    cands = []
    for scale in (1, 2, 4, 8):
        for codec in ("jpeg", "webp"):
            r = codec_matched(tiles, codec, target_bpp, scale=scale, at_or_below=True)
            r["name"] = codec if scale == 1 else f"{codec}@1/{scale}"
            cands.append(r)
    ok = [c for c in cands if c["bpp"] <= target_bpp * 1.0001]
    best = max(ok, key=lambda c: c["psnr"]) if ok else min(cands, key=lambda c: c["bpp"])
    return {k: best[k] for k in ("name", "psnr", "ssim", "bpp", "quality") if k in best} | \
        ({"ms_ssim": best["ms_ssim"]} if "ms_ssim" in best else {}) | \
        ({} if ok else {"note": "no classical setting reaches this rate; the lowest-rate one is shown"}), cands


# ---------------------------------------------------------------- the benchmark


def level_stats(codes: torch.Tensor, size: int) -> tuple[list[float], list[float]]:
    """(usage, perplexity) per level of (L, N) codes."""
    usage, ppl = [], []
    for lv in codes:
        cnt = torch.bincount(lv.long(), minlength=size).float()
        p = cnt[cnt > 0] / cnt.sum()
        usage.append((cnt > 0).float().mean().item())
        ppl.append(torch.exp(-(p * p.log()).sum()).item())
    return usage, ppl


def _levels_first(codes: torch.Tensor, levels: int) -> torch.Tensor:
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
        codes.append(_levels_first(tok.encode(to_tensor(np.ascontiguousarray(np.stack(tiles)))), tok.num_levels))
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


def _lpips_model():
    path = os.environ.get("UNITOK_LPIPS_WEIGHTS")
    if not path or not Path(path).is_file():
        return None
    from unitok.perceptual import load_perceptual

    return load_perceptual(path)


@torch.no_grad()
def _run_tokenizer(tok, tiles: list[np.ndarray], batch: int = 8):
    """Reconstruct uint8 tiles (N, H, W, 3) (images) or clips (N, T, H, W, 3) (videos)."""
    recs, codes = [], []
    t_enc = t_dec = 0.0
    for i in range(0, len(tiles), batch):
        x = to_tensor(np.stack(tiles[i:i + batch]))  # (b, 3, H, W) or (b, T, 3, H, W)
        if x.dim() == 5:
            x = x.transpose(1, 2)  # (b, 3, T, H, W)
        t0 = time.perf_counter()
        c = tok.encode(x)
        t1 = time.perf_counter()
        y = tok.decode(c)
        t2 = time.perf_counter()
        t_enc, t_dec = t_enc + t1 - t0, t_dec + t2 - t1
        if y.dim() == 5:
            y = y.transpose(1, 2)
        recs.extend(to_uint8(y))
        codes.append(c)
    return recs, codes, t_enc, t_dec


@torch.no_grad()  # not set_grad_enabled(False): that would leak into the caller's process
def run(args, tokenizer) -> int:
    from tqdm import tqdm

    tok = tokenizer.eval()
    video = tok.modality == "video"
    skips = SkipLog()
    files = list_media(args.data, "video" if video else "image", skips)
    if args.max_files:
        files = files[:args.max_files]
    items, names, fps = [], [], []
    for p in tqdm(files, desc="reading", disable=len(files) < 20 or not sys.stderr.isatty()):
        try:
            if video:
                items.append(_video_clip(p, getattr(tok, "bench_frames", 17)))
                names.append(p.name)
                fps.append(video_fps(p))
            else:
                for t in image_tiles(read_image(p, MIN_IMAGE_SIDE)):
                    items.append(t)
                    names.append(p.name)
        except DataError as e:
            skips.add(p, str(e).split(": ", 1)[-1])
    for p, why in skips.items:
        print(f"bench: skipped {p}: {why}")
    if not items:
        raise DataError(f"{args.data}: no readable {'videos' if video else 'images'} ({skips.summary()})")

    recs, codes, t_enc, t_dec = _run_tokenizer(tok, items)
    frames_per_item = items[0].shape[0] if video else 1
    n_img = len(items) * frames_per_item
    orig = [f for it in items for f in (it if video else [it])]
    rec = [f for it in recs for f in (it if video else [it])]
    ps = [psnr(a, b) for a, b in zip(orig, rec)]
    ss = [ssim(a, b) for a, b in zip(orig, rec)]
    cat = torch.cat([c.flatten(1) for c in codes])  # (items, tokens per item)
    size = tok.codebook_size
    per_level = torch.cat([_levels_first(c, tok.num_levels) for c in codes], dim=1)  # (L, N)
    usage_levels, ppl_levels = level_stats(per_level, size)
    tokens_per_item = cat.shape[1]
    pixels = orig[0].shape[0] * orig[0].shape[1]
    tokens_per_image = tokens_per_item / frames_per_item
    bpp = tokens_per_image * math.log2(size) / pixels
    ours = {"psnr": float(np.mean(ps)), "ssim": float(np.mean(ss)), "bpp": bpp,
            "codebook_usage": float(np.mean(usage_levels)), "perplexity": float(np.mean(ppl_levels)),
            "codebook_size": size, "levels": tok.num_levels, "tokens_per_image": tokens_per_image,
            "bits_per_token": math.log2(size), "usage_per_level": usage_levels, "perplexity_per_level": ppl_levels,
            "tokens_counted": int(cat.numel()),
            "encode_images_per_s": n_img / max(t_enc, 1e-9), "decode_images_per_s": n_img / max(t_dec, 1e-9)}
    need = getattr(args, "usage_tokens", None) or 20 * size
    if per_level.shape[1] >= need or video:
        ours["usage"] = {"source": str(args.data), "tokens_per_level": int(per_level.shape[1]),
                         "enough": per_level.shape[1] >= need, "codebook_usage": ours["codebook_usage"],
                         "perplexity": ours["perplexity"]}
    else:  # too few held-out tokens for a usage figure: crops of --usage-data (or --data) on top
        ours["usage"] = usage_sweep(tok, getattr(args, "usage_data", None) or args.data, need)
    notes = ["rFID skipped: no local Inception weights (none are shipped; nothing is downloaded)"]
    lp = _lpips_model()
    if lp is not None:
        ours["lpips"] = float(np.mean([lp(to_tensor(a)[None], to_tensor(b)[None]).item() for a, b in zip(orig, rec)]))
    else:
        notes.append("LPIPS skipped: set UNITOK_LPIPS_WEIGHTS to a local VGG16(+LPIPS) weights file to report it")
    if video:
        from unitok.bench.h264 import h264_matched

        T = frames_per_item
        seconds = [T / r for r in fps]
        ours["fps"] = float(np.mean(fps))
        ours["tokens_per_second"] = float(np.mean([tok.tokens_per_second(r, TILE, TILE) for r in fps]))
        ours["tokens_per_clip"] = tokens_per_item
        ours["kbps"] = float(np.mean([tokens_per_item * math.log2(size) / s / 1000 for s in seconds]))
        h = h264_matched(items, fps, tokens_per_item * math.log2(size))
        h_frames = [f for clip in h.pop("recs") for f in clip]
        h.update(psnr=float(np.mean([psnr(a, b) for a, b in zip(orig, h_frames)])),
                 ssim=float(np.mean([ssim(a, b) for a, b in zip(orig, h_frames)])),
                 kbps=float(np.mean([h["bits_per_clip"] / s / 1000 for s in seconds])),
                 bpp=h["bits_per_clip"] / (T * pixels))
        if "note" in h:
            notes.append(h["note"])
        tc_o = [np.abs(np.diff(o.astype(np.float32), axis=0) - np.diff(r.astype(np.float32), axis=0)).mean()
                for o, r in zip(items, recs)]
        ours["temporal_diff_l1"] = float(np.mean(tc_o))
        ours["frames_per_clip"] = frames_per_item

    results = {"protocol": PROTOCOL if not video else "videos: first frames, shorter side to 256, centre 256x256 crop",
               "files": len(files) - sum(1 for p, _ in skips.items if Path(p) in set(files)),
               "images": n_img, "skipped": [{"file": p, "reason": r} for p, r in skips.items],
               "ours": ours, **({"h264": h} if video else {})}
    if min(orig[0].shape[:2]) >= MS_SSIM_MIN_SIZE:
        ours["ms_ssim"] = float(np.mean([ms_ssim(a, b) for a, b in zip(orig, rec)]))
    best, cands = classical_best(orig, bpp)
    for c in cands:
        if c["name"] in ("jpeg", "webp"):
            results[c["name"]] = c
            if "note" in c:
                notes.append(c["note"])
    results["classical"] = cands
    results["classical_best"] = best
    curves = {c: [codec_at(orig, c, q) for q in ((1, 2, 3, 5, 8, 12, 20, 35, 50, 75) if c == "jpeg"
                                                   else (0, 2, 5, 10, 20, 35, 50, 75))] for c in ("jpeg", "webp")}
    results["curves"] = curves
    results["notes"] = notes

    out_dir = Path(args.out) if args.out else Path(args.json).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [dict(method=f"ours ({size} codes x {tok.num_levels} level)", psnr=ours["psnr"], ssim=ours["ssim"],
                 bpp=ours["bpp"], usage=ours["codebook_usage"], perplexity=ours["perplexity"],
                 **({"lpips": ours["lpips"]} if "lpips" in ours else {}))]
    for c in ("jpeg", "webp"):
        r = results[c]
        rows.append(dict(method=f"{c.upper()} q={r['quality']}", psnr=r["psnr"], ssim=r["ssim"], bpp=r["bpp"]))
    b = results["classical_best"]
    rows.append(dict(method=f"best classical at <= our rate: {b['name']} q={b['quality']}", psnr=b["psnr"],
                     ssim=b["ssim"], bpp=b["bpp"]))
    table = markdown_table(rows, ["method", "psnr", "ssim", "bpp", "usage", "perplexity"] +
                           (["lpips"] if "lpips" in ours else []),
                           fmt={"psnr": ".2f", "bpp": ".4f", "perplexity": ".0f", "usage": ".3f", "ssim": ".4f"})
    extra = (f"\n{results['files']} files, {n_img} {'frames' if video else '256x256 tiles'}; "
             f"{tokens_per_image:g} tokens per image, {math.log2(size):g} bits per token; encode {ours['encode_images_per_s']:.1f} img/s, "
             f"decode {ours['decode_images_per_s']:.1f} img/s ({torch.get_num_threads()} threads, "
             f"{'cuda' if next(tok.parameters()).is_cuda else 'cpu'}).\nProtocol: {results['protocol']}.\n")
    u = ours["usage"]
    extra += (f"Codebook usage over {u['tokens_per_level']:,} tokens per level ({u['source']}"
              f"{'' if u['enough'] else '; fewer than 20 x codebook size'}): {u['codebook_usage']:.1%}, "
              f"perplexity {u['perplexity']:.0f}\n")
    if video:
        hh = results["h264"]
        extra += (f"Video: {ours['tokens_per_second']:,.0f} tokens per second of 256x256 video at {ours['fps']:g} fps "
                  f"({tokens_per_item} tokens per {frames_per_item}-frame clip, {ours['kbps']:.1f} kbps); "
                  f"H.264 (libx264, CRF {hh['crf']}) at {hh['kbps']:.1f} kbps: PSNR {hh['psnr']:.2f} dB, "
                  f"SSIM {hh['ssim']:.4f} (ours {ours['psnr']:.2f} dB, {ours['ssim']:.4f})\n")
        extra += f"Temporal consistency (mean |d/dt rec - d/dt orig|, 8-bit levels): {ours['temporal_diff_l1']:.2f}\n"
    extra += "".join(f"Note: {n}\n" for n in notes)
    if skips.count:
        extra += f"Skipped: {skips.summary(limit=10)}\n"
    (out_dir / "table.md").write_text(table + extra)
    results["table_md"] = str(out_dir / "table.md")
    n = min(8, len(orig))
    idx = np.linspace(0, len(orig) - 1, n).round().astype(int)
    results["grid_png"] = str(save_grid([[orig[i] for i in idx], [rec[i] for i in idx]], out_dir / "grid.png"))
    results["rd_png"] = str(_rd_plot(results, out_dir / "rd.png"))
    write_json(results, args.json)
    print(table + extra, end="")
    return 0


def _video_clip(path, frames: int) -> np.ndarray:
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


def _rd_plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for c, style in (("jpeg", "o-"), ("webp", "s-")):
        pts = results["curves"][c]
        ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], style, ms=3, label=c.upper())
        ax.plot([results[c]["bpp"]], [results[c]["psnr"]], "k" + style[0], ms=6, mfc="none")
    o = results["ours"]
    ax.plot([o["bpp"]], [o["psnr"]], "r*", ms=12, label="ours")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("rate-distortion (mean over 256x256 tiles)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
