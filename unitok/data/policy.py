"""The media policy: how an image, a video or a recording becomes a tokenizer's input. One module,
read by `unitok pretokenize` (training documents), the generation pipeline (prompts) and the demo
report, so that a prompt's media are encoded exactly as the training data were.

    policy = MediaPolicy(image_size=256)
    x = image_input("cat.jpg", policy.image_size)               # (1, 3, 256, 256) in [-1, 1]
    clips = video_clips("walk.mp4", policy)                     # [(1, 3, 9, 128, 128), ...]
    chunks = audio_chunks(load_audio("talk.wav", tok), tok, policy)  # [(1, C, n <= 10 s), ...]

* images: the shorter side resized to `image_size` (antialiased when shrinking), centre-cropped;
* video: frames resampled to `video_fps`, each resized and cropped as an image to `video_size`, cut
  into clips of `video_frames` (a shorter rest is dropped); a prompt takes the first clip, or the
  longest 1 + k x temporal factor frames of a shorter video (`prompt_clip`);
* audio: the tokenizer's sample rate and channels (stereo mixed to mono for a mono codec), cut into
  chunks of at most `audio_max_seconds` (a last chunk shorter than one codec frame is dropped).

Limits: a file's header is read before it is decoded, and a video longer than `max_video_frames` at
`video_fps`, one whose decoded frames would exceed `max_video_pixels` (frames x width x height), or
a recording longer than `max_recording_seconds` is refused with a one-line DataError; decoding also
stops at the limit when the header understates the length.

The policy is recorded with the data: in stats.json of the shards (`PretokenizeConfig`, which holds
it) and from there in each unified checkpoint (`task.policy`); `MediaPolicy.from_record` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from unitok.errors import DataError

__all__ = ["MediaPolicy", "image_input", "video_clips", "prompt_clip", "load_audio", "audio_chunks"]


@dataclass
class MediaPolicy:
    image_size: int = 256
    video_size: int = 128
    video_fps: float = 8.0
    video_frames: int = 9  # frames per clip (what the video tokenizer takes, e.g. 1 + 4k)
    audio_max_seconds: float = 10.0
    # limits, each checked against the file's header before decoding (and again while decoding)
    max_video_frames: int = 4096  # frames at video_fps (8.5 min at 8 fps)
    max_video_pixels: int = 500_000_000  # decoded frames x width x height, held as RGB: 1.5 GB (30 s of 1080p at 8 fps)
    max_recording_seconds: float = 3600.0  # held whole as float32: 230 MB at 16 kHz mono, 1.4 GB at 48 kHz stereo

    @classmethod
    def from_record(cls, rec: dict | None) -> "MediaPolicy":
        """The policy of a recorded dict (stats.json `policy`, a checkpoint's `task.policy`: all of
        PretokenizeConfig's fields); the defaults for a field it lacks, or for no record."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (rec or {}).items() if k in known})


def image_input(source, size: int):
    """An image (a path or a file object) -> (1, 3, size, size) in [-1, 1]. DataError when Pillow
    cannot decode it or it is smaller than MIN_IMAGE_SIDE a side."""
    from unitok.data.media import MIN_IMAGE_SIDE, read_image, to_tensor

    return _resize_crop(to_tensor(read_image(source, MIN_IMAGE_SIDE))[None], size)


def video_clips(source, policy: MediaPolicy, name: str | None = None) -> list:
    """A video (a path or a file object; `name` for messages) -> its clips, each (1, 3, T, S, S) with
    T = policy.video_frames, S = policy.video_size. DataError when it is shorter than one clip, or
    longer than max_video_frames, or its frames exceed max_video_pixels."""
    from unitok.data.media import read_video

    frames = read_video(source, max_frames=policy.max_video_frames, fps=policy.video_fps, name=name,
                        max_pixels=policy.max_video_pixels, refuse_longer=True)  # (T, H, W, 3)
    F_ = policy.video_frames
    if len(frames) < F_:
        raise DataError(f"video of {len(frames)} frames at {policy.video_fps:g} fps < one clip ({F_})")
    return [_clip(frames[s:s + F_], policy.video_size) for s in range(0, len(frames) - F_ + 1, F_)]


def prompt_clip(source, policy: MediaPolicy, size: int, temporal_factor: int):
    """A prompt's input clip: the first clip of `video_clips` at `size` px, or for a shorter video its
    first 1 + k x `temporal_factor` frames (what the video tokenizer takes). -> (1, 3, T, size, size)."""
    from unitok.data.media import read_video

    frames = read_video(source, max_frames=policy.video_frames, fps=policy.video_fps,
                        max_pixels=policy.max_video_pixels)  # (T, H, W, 3)
    T = 1 + (min(len(frames), policy.video_frames) - 1) // temporal_factor * temporal_factor
    return _clip(frames[:T], size)


def load_audio(source, tokenizer, name: str | None = None, policy: MediaPolicy | None = None):
    """A recording (a path or a file object; `name` for messages) -> (C, N) float at the audio
    tokenizer's sample rate and channels. DataError if unreadable, empty or longer than the policy's
    (default: MediaPolicy's) max_recording_seconds."""
    from unitok.data.audio import decode_audio, to_model_format

    src = source if hasattr(source, "read") else str(source)
    wav, sr = decode_audio(src, name or src, (policy or MediaPolicy()).max_recording_seconds)
    return to_model_format(wav, sr, tokenizer.config.sample_rate, tokenizer.config.channels)


def audio_chunks(wav, tokenizer, policy: MediaPolicy) -> list:
    """(C, N) at the tokenizer's rate (`load_audio`) -> chunks (1, C, n) of at most
    policy.audio_max_seconds; a last chunk shorter than one codec frame is dropped. DataError (no
    file name) when shorter than MIN_AUDIO_SECONDS."""
    from unitok.data.audio import check_duration

    n = int(policy.audio_max_seconds * tokenizer.config.sample_rate)
    hop = tokenizer.hop_length
    check_duration(wav.shape[-1], tokenizer.config.sample_rate)
    return [wav[None, :, s:s + n] for s in range(0, wav.shape[-1], n) if wav[:, s:s + n].shape[-1] >= hop]


def _clip(frames, size: int):
    """uint8 (T, H, W, 3) -> (1, 3, T, size, size): every frame resized and cropped as an image."""
    from unitok.data.media import to_tensor

    return _resize_crop(to_tensor(frames), size).transpose(0, 1)[None]


def _resize_crop(x, size: int):
    """(N, 3, H, W) -> (N, 3, size, size): shorter side to `size` (antialiased), centre crop."""
    import torch.nn.functional as F

    H, W = x.shape[-2:]
    s = size / min(H, W)
    h, w = max(size, round(H * s)), max(size, round(W * s))
    x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=s < 1, align_corners=False)
    t, l_ = (h - size) // 2, (w - size) // 2
    return x[..., t:t + size, l_:l_ + size].clamp(-1, 1)
