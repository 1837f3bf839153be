"""Video tokenizer: shapes, causality (first frame alone), per-frame mode, a tiny training run."""

import numpy as np
import pytest
import torch

from unitok.config import from_dict
from unitok.tokenizers.base import load_tokenizer
from unitok.tokenizers.image import ImageTokenizer, image_preset
from unitok.tokenizers.video import VideoTokenizer, video_preset


def test_vq3d_shapes_and_causality(tmp_path):
    torch.manual_seed(0)
    tok = VideoTokenizer(video_preset("debug")).eval()  # spatial f4, temporal 4
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    codes = tok.encode(x)
    assert codes.shape == (1, 3, 4, 4)  # 9 frames -> 1 + 8/4
    assert tok.decode(codes).shape == x.shape
    one = tok.encode(x[:, :, :1])  # a single image is a one-frame video
    assert one.shape == (1, 1, 4, 4) and torch.equal(one[:, 0], codes[:, 0])
    y = x.clone()
    y[:, :, 5:] = -y[:, :, 5:]  # change only frames 5..8
    c2 = tok.encode(y)
    assert torch.equal(c2[:, :2], codes[:, :2]), "codes of frames 0..4 must not see later frames"
    with torch.no_grad():
        r1, r2 = tok.decode(codes), tok.decode(c2)
    torch.testing.assert_close(r1[:, :, :5], r2[:, :, :5])  # decoding is causal too
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        tok.encode(x[:, :, :4])
    tok.save_pretrained(tmp_path / "v")
    back = load_tokenizer(tmp_path / "v")
    assert torch.equal(back.encode(x), codes)


def test_per_frame_mode(tmp_path):
    torch.manual_seed(0)
    img = ImageTokenizer(image_preset("debug")).eval()
    img.save_pretrained(tmp_path / "img")
    tok = VideoTokenizer.from_image_tokenizer(tmp_path / "img")
    x = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    codes = tok.encode(x)
    assert codes.shape == (2, 3, 4, 4)
    assert torch.equal(codes[:, 1], img.encode(x[:, :, 1]))
    assert tok.decode(codes).shape == x.shape
    tok.save_pretrained(tmp_path / "pf")
    assert torch.equal(load_tokenizer(tmp_path / "pf").encode(x), codes)


def test_train_video_tiny(tmp_path):
    import av  # a core dependency (pyproject.toml): a missing one fails, never skips
    from skimage import data

    from unitok.training.vqgan import TrainConfig, train

    d = tmp_path / "vids"
    d.mkdir()
    frame = data.astronaut()[:64, :64]
    with av.open(str(d / "pan.mp4"), "w") as c:  # a slow pan over a real photo
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 48, 48, "yuv420p"
        for t in range(12):
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[t:t + 48, t:t + 48]),
                                                          format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    (d / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    cfg = from_dict(TrainConfig, dict(modality="video", name="v", preset="debug", sample_every=2,
                                      optim=dict(warmup_steps=1), run=dict(max_steps=3, log_every=1),
                                      data=dict(crop=16, batch_size=2, frames=5, frame_stride=1)))
    summary = train(cfg, d, tmp_path / "run", progress=False)
    assert summary["steps"] == 3 and summary["skipped_files"] == 1
    assert np.isfinite(summary["last"]["loss"])
    tok = load_tokenizer(tmp_path / "run" / "final")
    assert tok.encode(torch.zeros(1, 3, 5, 16, 16)).shape == (1, 2, 4, 4)
