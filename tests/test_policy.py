"""The media policy has one implementation (`unitok.data.policy`): the same image, clip and recording
give the same codes in a training document (`unitok pretokenize`) and in a generation prompt (the
pipeline's prompt builder), on a checkpoint that records the shards' policy as training does."""

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from unitok.data.pretokenize import PretokenizeConfig, pretokenize
from unitok.data.shards import read_shards

# audio chunks of 0.2 s and clips of 5 frames: the recording (0.3 s) and the video (12 frames) are
# longer than one, so pretokenize splits them and the prompt must take the first chunk / clip
CFG = PretokenizeConfig(image_size=32, video_size=16, video_frames=5, video_fps=8.0, audio_max_seconds=0.2)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """(pretokenize's documents by first modality, the pipeline, the media files)."""
    import imageio.v3 as iio
    from skimage import data

    from unitok.checkpoint import save_checkpoint
    from unitok.config import to_dict
    from unitok.data.audio import resample
    from unitok.data.media import to_tensor
    from unitok.generation import Pipeline
    from unitok.model.config import debug
    from unitok.model.transformer import UnifiedTransformer
    from unitok.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
    from unitok.tokenizers.image import ImageTokenizer, image_preset
    from unitok.tokenizers.text import TextTokenizer
    from unitok.tokenizers.video import VideoTokenizer, video_preset

    d = tmp_path_factory.mktemp("policy")
    (d / "t.txt").write_text("a photo of a cat. the sound of a bird. a dog on a mat.\n" * 50)
    # codebooks fitted to photos and to the chirp (as training would), so that codes vary with the
    # media: with codes that hardly change, another resize, frame rate or cut would go unnoticed
    photos = [np.asarray(Image.fromarray(p).resize((48, 32))) for p in (data.chelsea(), data.astronaut(), data.coffee())]
    rolled = np.stack([np.roll(p, 3 * i, axis=1) for p in photos for i in range(10)])  # (30, 32, 48, 3)
    frames = np.stack([np.roll(data.astronaut()[:20, :24], 2 * i, axis=1) for i in range(12)])  # 1.5 s at 8 fps
    t = np.arange(int(0.3 * 22050)) / 22050  # another rate: resampled to the codec's 16 kHz
    chirp = (t / 0.3 * np.sin(2 * np.pi * (220 + 3000 * t) * t)).astype(np.float32)  # rising pitch and loudness
    torch.manual_seed(0)
    img = ImageTokenizer(image_preset("debug")).eval()
    img.encode(to_tensor(rolled[..., :32, :]))
    vid = VideoTokenizer(video_preset("debug")).eval()
    vid.encode(to_tensor(rolled[..., :16, :16, :]).reshape(6, 5, 3, 16, 16).transpose(1, 2))
    aud = AudioTokenizer(AudioTokenizerConfig.tiny()).eval()
    aud.refit_codebooks([resample(torch.from_numpy(chirp), 22050, 16000)[None, None] * torch.rand(4, 1, 1)])
    toks = {"text": TextTokenizer.train([d / "t.txt"], vocab_size=300), "image": img, "video": vid, "audio": aud}
    for m, tok in toks.items():
        tok.save_pretrained(d / "tok" / m)

    media = d / "media"
    media.mkdir()
    files = {"image": media / "cat.png", "audio": media / "chirp.wav", "video": media / "clip.mp4"}
    Image.fromarray(data.chelsea()[:60, :90]).save(files["image"])  # not square: resized and centre-cropped
    sf.write(files["audio"], chirp, 22050)
    iio.imwrite(files["video"], frames, plugin="pyav", fps=8, codec="libx264")

    pretokenize([media], [d / "tok" / m for m in toks], d / "shards", CFG, progress=False)
    sh = read_shards(d / "shards")
    docs: dict = {}
    for i in range(len(sh)):
        ids = np.asarray(sh.document(i)[0], np.int64)
        un = sh.vocab.unpack(ids)
        (kind, codes), = un.segments[0].items()
        docs.setdefault(kind, []).append((ids.tolist(), np.asarray(codes)))

    cfg = debug(vocab_size=sh.vocab.size, max_seq_len=512)
    save_checkpoint(d / "run" / "checkpoint", kind="transformer", config=to_dict(cfg),
                    modules={"model": UnifiedTransformer(cfg)}, vocab=sh.vocab, tokenizers=toks,
                    state={"step": 0, "task": {"cond_dropout": 0.1, "policy": sh.stats["policy"]}})
    return docs, Pipeline.from_pretrained(d / "run"), files


def test_the_split_media_are_what_the_policy_says(both):
    docs, _, _ = both
    assert [len(docs[k]) for k in ("image", "audio", "video")] == [1, 2, 2]  # 0.2 + 0.1 s; frames 0-4, 5-9
    assert docs["image"][0][1].shape[-2:] == (8, 8)  # 32 px, f4


@pytest.mark.parametrize("task,kind", [("image-to-text", "image"), ("audio-to-text", "audio")])
def test_a_prompt_holds_the_training_span(both, task, kind):
    docs, pipe, files = both
    ids, _ = docs[kind][0]  # <bos> span <eos>; a longer recording: its first chunk
    r = pipe(task, **{kind: files[kind]}, max_new_tokens=1)
    assert r.prompt_ids == ids[:-1] and ids[-1] == pipe.vocab.eos


def test_a_video_prompt_holds_the_training_clip(both):
    docs, pipe, files = both
    ids, codes = docs["video"][0]  # <bos> header codes <eov> <eos>: the first clip
    r = pipe("video-continuation", video=files["video"])
    n = codes.size  # the prompt's header announces more frames; its codes are the clip's
    assert r.settings["input_frames"] == CFG.video_frames and len(r.prompt_ids) == len(ids) - 2
    assert r.prompt_ids[-n:] == ids[-n - 2:-2]
