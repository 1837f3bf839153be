"""Any-to-any generation from a unified checkpoint: text and media in, ids, text and media files out.

    from unitok.generation import Pipeline
    pipe = Pipeline.from_pretrained("runs/unified")
    result = pipe("text-to-image", prompt="a red square", seed=0, out="out/red")   # out/red/sample0.png

    unitok generate runs/unified --task text-to-image --prompt "a red square" --out out/red

Tasks (`TASKS`): text-to-text, text-to-image, image-to-text (captioning), text-to-audio (speech),
audio-to-text (transcription), image-to-image (the lower half of an image from its upper half),
video-continuation (more frames after a clip).

A prompt is built the way `unitok pretokenize` builds a training document: <bos>, the text, media
encoded by the checkpoint's tokenizers through the media policy of training (`unitok.data.policy`,
recorded: `training_policy`). For a task that produces media the pipeline writes the span header itself
(`UnifiedVocab.span_head`, by the vocabulary's span layout; by default image <boi> <size:h> <size:w>;
video <bov> <size:t> <size:h> <size:w>; audio <boa>) with the requested size,
so the span is forced; the grammar (`unitok.grammar`) then admits exactly that many codes and the end
marker, and the span is decoded by the tokenizer. Text output is text ids until <eos> (no span is
opened). Classifier-free guidance (`cfg` != 1) acts inside the media span only, and is refused for a
checkpoint trained without condition dropout (`guidance.check_guidance`).

Sizes: images and video frames, given or generated, are `size` pixels square (default: the policy's
image_size / video_size), a multiple of the tokenizer's downsampling factor; video `frames` is 1 + k x the
tokenizer's temporal factor (default: the input clip and as many frames again); audio is `seconds`
long, rounded up to whole codec frames (default: the model closes the span, at most the policy's
audio_max_seconds or what the context holds). A request that does not fit the model's context is
refused (`ContextLengthError`); nothing is cut.

The `n` samples of a call are the rows of one batch drawn with one seeded generator: the same
(seed, n) gives the same output.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from unitok.errors import CheckpointError, ConfigError, ContextLengthError, DataError, require_file

__all__ = ["TASKS", "Pipeline", "GenerationResult", "Sample", "training_policy", "run_cli"]


@dataclass(frozen=True)
class TaskSpec:
    inputs: tuple[str, ...]  # media the task reads (required)
    output: str  # "text", "image", "video" or "audio"
    help: str


TASKS = {
    "text-to-text": TaskSpec((), "text", "continue the prompt"),
    "text-to-image": TaskSpec((), "image", "an image for the prompt"),
    "image-to-text": TaskSpec(("image",), "text", "caption an image (--image; the prompt, if any, starts the caption)"),
    "text-to-audio": TaskSpec((), "audio", "speech for the prompt (--seconds)"),
    "audio-to-text": TaskSpec(("audio",), "text", "transcribe audio (--audio)"),
    "image-to-image": TaskSpec(("image",), "image", "the lower half of an image from its upper half (--image)"),
    "video-continuation": TaskSpec(("video",), "video", "continue a clip (--video, --frames in all)"),
}
_QUIET_BELOW = 256  # tokens per row: shorter runs show no progress


def training_policy(state=None):
    """The media policy of the training data (`unitok.data.policy.MediaPolicy`): the one recorded in
    the checkpoint (`state.json` -> `task.policy`) where there is one, else the policy's defaults
    (images 256 px, video 128 px at 8 fps in clips of 9 frames, audio chunks of at most 10 s)."""
    from unitok.data.policy import MediaPolicy

    state = getattr(state, "state", state) or {}
    task = state.get("task") if isinstance(state, dict) else None
    rec = task.get("policy") if isinstance(task, dict) else None
    return MediaPolicy.from_record(rec if isinstance(rec, dict) else None)


@dataclass
class Sample:
    """One generated sample. `ids`: the new ids (after the prompt). `text`: decoded text (text tasks).
    `media`: image (H, W, 3) uint8, video (T, H, W, 3) uint8, audio (C, N) float32 in [-1, 1] (media
    tasks). `span`: the media span's modality, header sizes and code-grid shape. `file`: where it was
    written (with `out`)."""

    ids: list[int]
    text: str | None = None
    media: np.ndarray | None = None
    span: dict | None = None
    file: Path | None = None

    def to_json(self) -> dict:
        d = {"ids": self.ids, "text": self.text, "span": self.span,
             "media_shape": None if self.media is None else list(self.media.shape),
             "file": None if self.file is None else self.file.name}
        return {k: v for k, v in d.items() if v is not None}


@dataclass
class GenerationResult:
    task: str
    prompt: str
    prompt_ids: list[int]
    samples: list[Sample]
    settings: dict
    timings: dict
    inputs: dict = field(default_factory=dict)  # media inputs: path per kind
    files: list[Path] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"task": self.task, "prompt": self.prompt, "inputs": self.inputs, "prompt_ids": self.prompt_ids,
                "samples": [s.to_json() for s in self.samples], "settings": self.settings, "timings": self.timings}


@dataclass
class _Request:
    """A prompt ready for the sampler: ids, the grammar states' setup, and how to read the output."""

    ids: list[int]
    max_new_tokens: int
    span_start: int | None = None  # media output: where the forced span begins in `ids`
    audio_frames: int | None = None  # text-to-audio with seconds: the span's exact length in frames
    samples: int | None = None  # audio: samples to keep after decoding
    settings: dict = field(default_factory=dict)


class Pipeline:
    """A unified checkpoint ready to run `TASKS`. `Pipeline.from_pretrained(path)`; then
    `pipe(task, prompt=..., ...)` (see `run`)."""

    def __init__(self, loaded, *, policy=None, device: str | torch.device = "cpu"):
        from unitok.generation.guidance import condition_dropout
        from unitok.grammar import SpanGrammar

        if loaded.kind != "transformer" or loaded.vocab is None:
            raise CheckpointError(f"{loaded.path}: not a language-model checkpoint (no transformer with a vocabulary)")
        self.path = Path(loaded.path)
        self.device = torch.device(device)
        self.model = loaded.model.to(self.device).eval()
        self.vocab = loaded.vocab
        self.tokenizers = {t.modality: t for t in loaded.tokenizers.values()}
        self.state = loaded.state
        self.loaded = loaded  # the heads it trained (`check_head`)
        self.cond_dropout = condition_dropout(loaded)
        self.policy = policy if policy is not None else training_policy(loaded.state)
        self.grammar = SpanGrammar(self.vocab)
        self.text_grammar = SpanGrammar(self.vocab, spans=())  # text output: text ids and <eos>

    @classmethod
    def from_pretrained(cls, path, *, device: str = "cpu", policy=None) -> "Pipeline":
        """Load a unified (or text) checkpoint: a run directory or a checkpoint directory."""
        from unitok.checkpoint import load_model

        return cls(load_model(path), policy=policy, device=device)

    def __call__(self, task: str, **kw) -> GenerationResult:
        return self.run(task, **kw)

    # ------------------------------------------------------------------ the run
    def run(self, task: str, prompt: str = "", *, image=None, audio=None, video=None, seconds: float | None = None,
            size: int | None = None, frames: int | None = None, n: int = 1, seed: int = 0, cfg: float = 1.0,
            max_new_tokens: int | None = None, sampling=None, temperature: float | None = None,
            top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
            out=None, progress: bool = False, head: str = "discrete", steps: int = 50,
            sampler: str | None = None) -> GenerationResult:
        """Generate `n` samples for `task`. image / audio / video: input files (the task's inputs only).
        seconds (text-to-audio), size (pixels, image and video tasks), frames (video-continuation, in
        all): the output's size. cfg: guidance scale inside the media span (1 = off). max_new_tokens:
        text tasks only (default: what the context holds). sampling, temperature, top_k, top_p,
        repetition_penalty: as `generate_batch`. out: a folder for the files and generation.json.
        progress: a progress bar (terminal) or periodic lines for long spans. head: "discrete" (codes
        sampled from the logits) or "diffusion" (text-to-image only so far: the latent sampled by the
        checkpoint's diffusion head with `steps` steps of `sampler`, its codes fed back, the continuous
        latent decoded; `diffusion_span`). One-line errors (`UnitokError`) for every bad input."""
        from unitok.generation.guidance import check_guidance
        from unitok.generation.sample import generate_batch, resolve_sampling

        t0 = time.perf_counter()
        spec = self._check(task, dict(image=image, audio=audio, video=video), seconds=seconds, size=size,
                           frames=frames, n=n, cfg=cfg, max_new_tokens=max_new_tokens)
        check_guidance(cfg, self.cond_dropout)
        try:
            settings = resolve_sampling(sampling, temperature=temperature, top_k=top_k, top_p=top_p,
                                        repetition_penalty=repetition_penalty)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        req = self._request(task, spec, prompt or "", image=image, audio=audio, video=video, seconds=seconds,
                            size=size, frames=frames, max_new_tokens=max_new_tokens)
        t1 = time.perf_counter()

        if head != "discrete":
            samples = self._diffusion(task, req, n=n, seed=seed, cfg=cfg, head=head, steps=steps, sampler=sampler)
            rows = [smp.ids for smp in samples]
            t2 = t3 = time.perf_counter()  # the latents are decoded inside
        else:
            grammar = self.grammar if spec.output != "text" else self.text_grammar
            states = [grammar.start(req.ids) for _ in range(n)]
            for st in states:
                st.frames = req.audio_frames
            stops = [self.vocab.marker_ids[spec.output][1]] if spec.output != "text" else None
            bar = _Progress(req.max_new_tokens, task, progress)
            try:
                rows = generate_batch(self.model, [req.ids] * n, req.max_new_tokens, sampling=settings, seed=seed,
                                      eos_id=self.vocab.eos, stop_ids=stops, grammar=states, cfg_scale=cfg,
                                      progress=bar.update)
            finally:
                bar.close()
            t2 = time.perf_counter()

            samples = [self._read(spec.output, req, new) for new in rows]
            t3 = time.perf_counter()

        result = GenerationResult(
            task=task, prompt=prompt or "", prompt_ids=req.ids, samples=samples,
            inputs={k: str(v) for k, v in dict(image=image, audio=audio, video=video).items() if v is not None},
            settings={"checkpoint": str(self.path), "vocab_hash": self.vocab.hash, "n": n, "seed": seed, "cfg": cfg,
                      "cond_dropout": self.cond_dropout, "max_new_tokens": req.max_new_tokens,
                      "sampling": {m: asdict(s) for m, s in settings.items()}, **req.settings,
                      "policy": asdict(self.policy), "device": str(self.device),
                      **({"head": head, "steps": steps, "sampler": sampler or "default"} if head != "discrete" else {})},
            timings={"prompt_s": round(t1 - t0, 4), "generate_s": round(t2 - t1, 4), "decode_s": round(t3 - t2, 4),
                     "new_tokens": sum(len(r) for r in rows),
                     "tokens_per_s": round(sum(len(r) for r in rows) / max(t2 - t1, 1e-9), 1)})
        if out is not None:
            self._write_media(result, Path(out), spec.output)
        result.timings["total_s"] = round(time.perf_counter() - t0, 4)
        if out is not None:
            js = Path(out) / "generation.json"
            js.write_text(json.dumps(result.to_json(), indent=1) + "\n")
            result.files.append(js)
        return result

    def _diffusion(self, task, req, *, n, seed, cfg, head, steps, sampler) -> list[Sample]:
        """`run`'s samples from the diffusion head: each span from `diffusion_span`, its latent decoded."""
        from unitok.checkpoint import check_head
        from unitok.generation.diffusion import diffusion_span
        from unitok.generation.guidance import unconditional_prompt

        if task != "text-to-image":
            raise ConfigError(f"{task}: the diffusion head generates text-to-image spans only so far (use --head "
                              "discrete)")
        check_head(self.loaded, "image", head)
        v, tok = self.vocab, self.tokenizers["image"]
        offsets = [v.code_range("image", lvl)[0] for lvl in range(v.codebooks["image"].levels)]
        samples = []
        for i in range(n):
            try:
                z, codes = diffusion_span(self.model, tok, v, "image", req.ids, tuple(req.settings["grid"]),
                                          steps=steps, sampler=sampler, cfg_scale=cfg,
                                          uncond_prompt=unconditional_prompt(req.ids, v), seed=seed + i)
            except ValueError as e:  # steps or a sampler the head refuses
                raise ConfigError(str(e)) from None
            new = [int(c) + o for row in codes.tolist() for c, o in zip(row, offsets)] + [v.marker_ids["image"][1]]
            samples.append(self._read("image", req, new, latent=z))
        return samples

    # ------------------------------------------------------------------ checks
    def _check(self, task, given, *, seconds, size, frames, n, cfg, max_new_tokens) -> TaskSpec:
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        spec = TASKS[task]
        for kind in spec.inputs:
            if given[kind] is None:
                raise ConfigError(f"{task} needs an input {kind}: pass --{kind} FILE ({kind}= in Python)")
        extra = [k for k, v in given.items() if v is not None and k not in spec.inputs]
        if extra:
            raise ConfigError(f"{task} takes no {extra[0]} input (--{extra[0]})")
        for kind in spec.inputs:  # an imported model that reads this modality otherwise (Janus: SigLIP)
            if kind in self.state.get("refused_inputs", {}):
                raise ConfigError(f"{task}: {self.state['refused_inputs'][kind]}")
        unused = {"--seconds": seconds is not None and task != "text-to-audio",
                  "--size": size is not None and not {"image", "video"} & {*spec.inputs, spec.output},
                  "--frames": frames is not None and task != "video-continuation",
                  "--max-new-tokens": max_new_tokens is not None and spec.output != "text"}
        for opt, bad in unused.items():
            if bad:
                why = {"--max-new-tokens": "; a media span's length is set by its size"}.get(opt, "")
                raise ConfigError(f"{task} does not take {opt}{why}")
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"n (samples) must be a positive integer, got {n!r}")
        if cfg != 1 and spec.output == "text":
            raise ConfigError(f"guidance (cfg {cfg}) acts inside media spans; {task} generates text (use cfg 1)")
        needed = [m for m in ("text", *spec.inputs, spec.output) if m != "text" or spec.output == "text"]
        for m in dict.fromkeys(needed):
            if m not in self.tokenizers:
                have = ", ".join(sorted(self.tokenizers)) or "none"
                a = "an" if m[0] in "aeiou" else "a"
                raise CheckpointError(f"{self.path}: {task} needs {a} {m} tokenizer; this checkpoint has {have}")
        return spec

    def _text(self, prompt: str) -> list[int]:
        if not prompt:
            return []
        if "text" not in self.tokenizers:
            have = ", ".join(sorted(self.tokenizers)) or "none"
            raise CheckpointError(f"{self.path}: a text prompt needs a text tokenizer; this checkpoint has {have}")
        return list(self.tokenizers["text"].encode(prompt))

    def _side(self, modality: str, px) -> int:
        """Pixels a side -> codes a side, or a one-line error for a size the tokenizer cannot produce."""
        f = self.tokenizers[modality].downsample
        if isinstance(px, bool) or not isinstance(px, int) or px < 1:
            raise ConfigError(f"{modality} size must be a positive number of pixels, got {px!r}")
        if px % f:
            lo = max(f, px // f * f)
            raise ConfigError(f"{modality} size {px} px is not a multiple of the {modality} tokenizer's downsampling "
                              f"factor {f}; use e.g. {lo} or {lo + f}")
        fixed = self.vocab.spans[modality].sizes  # an imported model's grid of one size (Chameleon, Janus)
        if fixed and px // f != fixed[-1]:
            raise ConfigError(f"{modality} spans of this model are {' x '.join(map(str, fixed))} codes: --size "
                              f"{fixed[-1] * f}")
        if not fixed and not self.vocab.spans[modality].size_text and px // f > self.vocab.max_size:
            raise ConfigError(f"{modality} size {px} px gives {px // f} codes a side; the vocabulary's size tokens "
                              f"go up to {self.vocab.max_size}")
        return px // f

    def _fits(self, task: str, prompt: int, codes: int, hint: str) -> None:
        ctx = self.model.cfg.max_seq_len
        if prompt + codes + 1 > ctx:
            raise ContextLengthError(f"{task}: prompt of {prompt} tokens + {codes} codes + end marker = "
                                     f"{prompt + codes + 1} tokens exceeds the model's context of {ctx} tokens; {hint}")

    # ------------------------------------------------------------------ prompts
    def _request(self, task, spec, prompt, *, image, audio, video, seconds, size, frames, max_new_tokens) -> _Request:
        v, bos = self.vocab, self.vocab.bos
        text = self._text(prompt)
        if spec.output == "text":
            media, settings = [], {}
            if image is not None:
                px = self.policy.image_size if size is None else size
                media, settings = self._span("image", self._encode_image(image, px)), {"size": px}
            elif audio is not None:
                media = self._span("audio", self._encode_audio(audio))
            ids = [bos] + media + text
            ctx = self.model.cfg.max_seq_len
            if max_new_tokens is None:
                if len(ids) >= ctx:
                    raise ContextLengthError(f"{task}: the prompt of {len(ids)} tokens fills the model's context "
                                             f"of {ctx} tokens; shorten it")
                max_new_tokens = ctx - len(ids)
            from unitok.generation.sample import check_context

            check_context([len(ids)], max_new_tokens, ctx)
            return _Request(ids, max_new_tokens, settings=settings)

        m = spec.output
        ids = [bos] + text
        if m == "image":
            px = self.policy.image_size if size is None else size
            side = self._side("image", px)
            L = v.codebooks["image"].levels
            header = v.span_head("image", (side, side))
            given = []
            if task == "image-to-image":
                if side < 2:
                    raise ConfigError(f"image-to-image needs at least 2 rows of codes: size >= "
                                      f"{2 * self.tokenizers['image'].downsample} px")
                body = self._span("image", self._encode_image(image, px))[len(header):-1]
                given = body[: side // 2 * (side * L + bool(v.spans["image"].row_end))]  # the upper rows (and markers)
            codes = self.grammar.after_header("image", [side, side]) - 1 - len(given)  # codes (and markers) to come
            self._fits(task, len(ids) + len(header) + len(given), codes, "ask for a smaller --size")
            settings = {"size": px, "grid": [side, side], "levels": L}
            if given:
                settings["given_rows"] = side // 2
            return _Request(ids + header + given, codes + 1, span_start=len(ids), settings=settings)
        if m == "video":
            tok = self.tokenizers["video"]
            px = self.policy.video_size if size is None else size
            side = self._side("video", px)
            tf = tok.config.temporal_factor
            clip, clip_frames = self._encode_video(video, px)
            if frames is None:
                frames = clip_frames + max(self.policy.video_frames - 1, tf)
            if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1 or (frames - 1) % tf:
                raise ConfigError(f"video of {frames!r} frames: the video tokenizer makes clips of 1 + {tf}k frames "
                                  f"(e.g. {1 + tf}, {1 + 2 * tf}, {1 + 3 * tf})")
            if frames <= clip_frames:
                raise ConfigError(f"--frames {frames} must exceed the {clip_frames} frames of the input clip")
            T = tok.latent_frames(frames)
            if T > v.max_size:
                raise ConfigError(f"{frames} frames give {T} latent frames; the vocabulary's size tokens go up to "
                                  f"{v.max_size}")
            L = v.codebooks["video"].levels
            header = v.span_head("video", (T, side, side))
            given = self._span("video", clip)[len(header):-1]
            codes = T * side * side * L - len(given)
            self._fits(task, len(ids) + len(header) + len(given), codes, "ask for fewer --frames or a smaller --size")
            settings = {"size": px, "frames": frames, "input_frames": clip_frames, "grid": [T, side, side],
                        "levels": L, "fps": self.policy.video_fps}
            return _Request(ids + header + given, codes + 1, span_start=len(ids), settings=settings)
        # audio
        tok = self.tokenizers["audio"]
        L, sr = v.codebooks["audio"].levels, tok.config.sample_rate
        header = v.span_head("audio")
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                raise ConfigError(f"--seconds must be a positive duration, got {seconds!r}")
            samples = max(1, round(seconds * sr))
            n_frames = tok.num_frames(samples)
            self._fits(task, len(ids) + len(header), n_frames * L, "ask for fewer --seconds")
            return _Request(ids + header, n_frames * L + 1, span_start=len(ids), audio_frames=n_frames,
                            samples=samples, settings={"seconds": samples / sr, "frames": n_frames, "levels": L,
                                                       "sample_rate": sr})
        room = (self.model.cfg.max_seq_len - len(ids) - len(header) - 1) // L  # frames that fit before the end marker
        n_frames = min(tok.num_frames(round(self.policy.audio_max_seconds * sr)), room)
        if n_frames < 1:
            self._fits(task, len(ids) + len(header), L, "shorten the prompt")
        return _Request(ids + header, n_frames * L, span_start=len(ids),
                        settings={"max_seconds": n_frames * tok.hop_length / sr, "max_frames": n_frames, "levels": L,
                                  "sample_rate": sr})

    def _span(self, modality: str, codes) -> list[int]:
        return self.vocab.pack([{modality: codes}], bos=False, eos=False).ids.tolist()

    def _encode_image(self, path, px: int) -> np.ndarray:
        from unitok.data.policy import image_input

        self._side("image", px)
        x = image_input(require_file(path, "image"), px)  # (1, 3, px, px)
        return self.tokenizers["image"].encode(x)[0].cpu().numpy()

    def _encode_audio(self, path) -> np.ndarray:
        from unitok.data.policy import audio_chunks, load_audio

        tok = self.tokenizers["audio"]
        wav = load_audio(require_file(path, "audio"), tok, policy=self.policy)
        try:
            chunks = audio_chunks(wav, tok, self.policy)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
        # training kept a transcript only with a clip of at most audio_max_seconds: the first chunk here
        return tok.encode(chunks[0])[0].cpu().numpy()  # (L, T')

    def _encode_video(self, path, px: int) -> tuple[np.ndarray, int]:
        """The input clip (`prompt_clip`: the policy's first clip, or less of a shorter video),
        resized and cropped to px. -> codes, frames."""
        from unitok.data.policy import prompt_clip

        tok = self.tokenizers["video"]
        x = prompt_clip(require_file(path, "video"), self.policy, px, tok.config.temporal_factor)  # (1, 3, T, px, px)
        return tok.encode(x)[0].cpu().numpy(), x.shape[2]

    # ------------------------------------------------------------------ outputs
    def _read(self, output: str, req: _Request, new: list[int], latent: torch.Tensor | None = None) -> Sample:
        v = self.vocab
        if output == "text":
            keep = [t for t in new if t < v.text_size and t != v.eos]  # an imported <eos> is a text id
            return Sample(ids=new, text=self.tokenizers["text"].decode(keep))
        span = req.ids[req.span_start:] + new
        un = v.unpack(span)
        segs = [s for s in un.segments if output in s]
        if un.problems or len(segs) != 1 or len(un.segments) != 1:  # the grammar rules this out
            raise RuntimeError(f"the generated {output} span does not decode: {'; '.join(un.problems) or un.segments}")
        codes = segs[0][output]
        tok = self.tokenizers[output]
        with torch.no_grad():  # a diffusion head's continuous latent, rendered by the decoder of the codes
            y = tok.decode(torch.as_tensor(codes)[None]) if latent is None else tok.decode_latents(latent)
        from unitok.data.media import to_uint8

        if output == "image":
            media = to_uint8(y[0])  # (H, W, 3)
        elif output == "video":
            media = to_uint8(y[0].transpose(0, 1))  # (T, H, W, 3)
        else:
            y = y[0]
            media = (y[:, : req.samples] if req.samples else y).float().cpu().numpy()  # (C, N)
        n = len(v.spans[output].header)
        header = (list(codes.shape[-n:]) if v.spans[output].size_text else  # sizes written as text: the grid's
                  [int(t) - v.size_start + 1 for t in span[1:1 + n]])
        info = {"modality": output, "header": header, "codes_shape": list(codes.shape),
                "generated_codes": sum(lo <= t < hi for t in new for lo, hi in v.code_ranges())}
        return Sample(ids=new, media=media, span=info)

    def _write_media(self, result: GenerationResult, out: Path, output: str) -> None:
        out.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(result.samples):
            stem = out / f"sample{i}"
            if output == "text":
                s.file = stem.with_suffix(".txt")
                s.file.write_text(s.text + "\n")
            elif output == "image":
                from PIL import Image

                s.file = stem.with_suffix(".png")
                Image.fromarray(s.media).save(s.file)
            elif output == "audio":
                from unitok.data.audio import write_wav

                s.file = stem.with_suffix(".wav")
                write_wav(s.file, torch.from_numpy(s.media), self.tokenizers["audio"].config.sample_rate)
            else:
                from unitok.data.media import write_video

                s.file = write_video(stem, s.media, self.policy.video_fps)
            result.files.append(s.file)


class _Progress:
    """tqdm on a terminal, a plain line every `every` seconds otherwise; nothing for fewer than
    _QUIET_BELOW tokens per row or when off."""

    def __init__(self, total: int, desc: str, enabled: bool, every: float = 10.0):
        self.total, self.desc, self.every = total, desc, every
        self.on = enabled and total >= _QUIET_BELOW
        self.bar, self.t0, self.last, self.done = None, time.perf_counter(), time.perf_counter(), 0
        if self.on and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="tok", leave=False, file=sys.stderr)

    def update(self, steps: int) -> None:
        if not self.on:
            return
        if self.bar is not None:
            self.bar.update(steps - self.done)
        elif time.perf_counter() - self.last >= self.every:
            self.last = time.perf_counter()
            rate = steps / (self.last - self.t0)
            print(f"generate {self.desc}: {steps}/{self.total} tokens ({100 * steps / self.total:.0f}%), "
                  f"{rate:.0f} tokens/s", file=sys.stderr, flush=True)
        self.done = steps

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_cli(args) -> int:
    pipe = Pipeline.from_pretrained(args.run, device=args.device)
    r = pipe(args.task, prompt=args.prompt, image=args.image, audio=args.audio, video=args.video,
             seconds=args.seconds, size=args.size, frames=args.frames, n=args.n, seed=args.seed, cfg=args.cfg,
             max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
             repetition_penalty=args.repetition_penalty, out=args.out, progress=True, head=args.head,
             steps=args.steps, sampler=args.sampler)
    for s in r.samples:
        print(f"{s.file}" + (f": {s.text}" if s.text is not None else ""))
    t = r.timings
    print(f"{args.task}: {r.settings['n']} sample(s), {t['new_tokens']} new tokens in {t['generate_s']:.2f} s "
          f"({t['tokens_per_s']:g} tokens/s) -> {Path(args.out) / 'generation.json'}")
    return 0
