"""The video bench's best classical codec considers H.264 beside the per-frame image codecs."""

import json
from argparse import Namespace

import numpy as np
import torch
from skimage import data

from unitok.bench.image import classical_best


def _tiles():
    return [np.ascontiguousarray(data.astronaut()[:64, :64]), np.ascontiguousarray(data.coffee()[:64, :64])]


def _h264(psnr, bpp):
    return {"name": "h264", "psnr": psnr, "ssim": 0.9, "bpp": bpp, "quality": 30}


def test_h264_is_a_candidate_and_chosen_when_best():
    tiles, target = _tiles(), 0.5
    plain, cands = classical_best(tiles, target)
    assert "h264" not in {c["name"] for c in cands}  # images: the per-frame codecs only
    best, cands = classical_best(tiles, target, [_h264(plain["psnr"] + 3, 0.4)])
    assert "h264" in {c["name"] for c in cands}
    assert best["name"] == "h264" and best["quality"] == 30 and best["psnr"] == plain["psnr"] + 3
    best, _ = classical_best(tiles, target, [_h264(plain["psnr"] - 3, 0.4)])  # worse: not chosen
    assert best == plain
    best, _ = classical_best(tiles, target, [_h264(plain["psnr"] + 3, 0.6)])  # above our rate: not a candidate
    assert best == plain


def test_video_bench_chooses_among_h264_and_the_image_codecs(tmp_path):
    from unitok.apps.bench_image import run
    from unitok.data.media import write_video
    from unitok.tokenizers.video import VideoTokenizer, video_preset

    d = tmp_path / "v"
    d.mkdir()
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(40, 220, (8, 8, 3)), np.ones((8, 8, 1)))
    write_video(d / "pan", np.stack([np.roll(base, 2 * t, axis=1) for t in range(12)]).astype(np.uint8), 24)
    torch.manual_seed(0)
    tok = VideoTokenizer(video_preset("per-frame-debug")).eval()
    js = tmp_path / "r.json"
    assert run(Namespace(data=str(d), json=str(js), out=None, max_files=None), tok) == 0
    r = json.loads(js.read_text())
    h264 = next(c for c in r["classical"] if c["name"] == "h264")
    assert h264["psnr"] == r["h264"]["psnr"] and h264["quality"] == r["h264"]["crf"]
    ok = [c for c in r["classical"] if c["bpp"] <= r["ours"]["bpp"] * 1.0001]
    assert h264 in ok and r["classical_best"]["psnr"] == max(c["psnr"] for c in ok)
