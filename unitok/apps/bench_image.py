"""`unitok tokenizer bench` for image and video tokenizers: reconstruction fidelity, codebook usage, rate
and speed, next to JPEG and WebP (and H.264 for videos) at the matched rate, in one run; the best
classical codec at or below our rate (`classical_best`) is chosen among all of them, H.264 included.

    unitok tokenizer bench OUT/final --data HELD_OUT_DIR --json bench.json [--out DIR] [--max-files N]

The protocol (tiles, clips, matched qualities) is `unitok.bench.image`'s. rFID needs Inception weights
and is always skipped with a note (none are shipped). LPIPS is reported when UNITOK_LPIPS_WEIGHTS names
a local VGG16(+LPIPS) weights file. Writes the JSON, OUT/table.md, OUT/grid.png and OUT/rd.png.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unitok.bench.h264 import video_fps
from unitok.bench.image import (PROTOCOL, TILE, classical_best, codec_at, image_tiles, level_stats, levels_first,
                                usage_sweep, video_clip)
from unitok.data.media import MIN_IMAGE_SIDE, SkipLog, list_media, read_image, save_grid, to_tensor, to_uint8
from unitok.errors import DataError
from unitok.metrics import MS_SSIM_MIN_SIZE, ms_ssim, psnr, ssim
from unitok.reporting import markdown_table, write_json

__all__ = ["run"]


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
                items.append(video_clip(p, getattr(tok, "bench_frames", 17)))
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
    per_level = torch.cat([levels_first(c, tok.num_levels) for c in codes], dim=1)  # (L, N)
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
    # a video's frames are also coded as a clip by H.264 (temporal prediction): a candidate beside the per-frame codecs
    best, cands = classical_best(orig, bpp, [{"name": "h264", "psnr": h["psnr"], "ssim": h["ssim"], "bpp": h["bpp"],
                                              "quality": h["crf"]}] if video else [])
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
    rows.append(dict(method=f"best classical at <= our rate: {b['name']} {'CRF ' if b['name'] == 'h264' else 'q='}"
                            f"{b['quality']}", psnr=b["psnr"],
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
