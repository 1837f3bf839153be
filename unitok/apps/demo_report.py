"""The demo's report: figures measured on its outputs, pictures, sounds, curves and DIR/report.md.

`write_report` (called by `unitok.apps.demo.run`) measures
* the tokenizers: image and video PSNR of the reconstructions of the demo's photos and clips, audio
  log-mel distance of its utterances, text characters per token;
* the unified model: per modality, training tokens, the unigram entropy of that modality's tokens in
  the training documents (what a model that knew only token frequencies would score) and the
  held-out loss;
* generation: time and tokens/s per task, and how far each output is from the data it was asked
  for (PSNR, character error rate);
and writes DIR/pictures/*.png, DIR/audio/*.wav + spectrograms.png, DIR/loss.png, DIR/report.md.
Every number in the report's Figures section is finite (the tests check it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

__all__ = ["write_report", "tokenizer_figures"]

MODALITIES = ("text", "image", "video", "audio")


# ---------------------------------------------------------------------------------------------- measuring
@torch.no_grad()
def tokenizer_figures(out: Path, p, index: dict, toks: dict) -> tuple[dict, dict]:
    """(figures, examples): mean reconstruction quality per tokenizer on the demo's data (the data they
    were trained on), and the arrays the report shows (original and reconstruction)."""
    from unitok.data.audio import read_audio, to_model_format
    from unitok.data.media import to_uint8
    from unitok.data.policy import image_input, video_clips
    from unitok.metrics import mel_distance, psnr

    data, fig, ex = out / "data", {}, {}
    centre = [x for x in index["images"] if x["centre"]]
    x = torch.cat([image_input(data / item["file"], p.policy.image_size) for item in centre])
    y = torch.cat([toks["image"].decode(toks["image"].encode(b)) for b in x.split(16)])
    a, b = to_uint8(x), to_uint8(y)  # (N, S, S, 3)
    fig["image_psnr_db"] = float(np.mean([psnr(i, j) for i, j in zip(a, b)]))
    ex.update({f"image:{item['photo']}": (i, j) for item, i, j in zip(centre, a, b)})

    x = torch.cat([video_clips(data / item["file"], p.policy)[0] for item in index["video"]])  # (N, 3, T, S, S)
    y = torch.cat([toks["video"].decode(toks["video"].encode(b)) for b in x.split(8)])
    a, b = to_uint8(x.transpose(1, 2)), to_uint8(y.transpose(1, 2))  # (N, T, S, S, 3)
    fig["video_psnr_db"] = float(np.mean([psnr(i, j) for i, j in zip(a, b)]))
    ex.update({f"video:{item['file']}": (i, j) for item, i, j in zip(index["video"], a, b)})

    if "audio" in toks:
        tok = toks["audio"]
        sr = tok.config.sample_rate
        vals = []
        for k, item in enumerate(index["speech"][:12]):
            wav, rate = read_audio(data / item["file"])
            x = to_model_format(wav, rate, sr, tok.config.channels)
            y = tok.decode(tok.encode(x[None]), length=x.shape[-1])[0]
            vals.append(mel_distance(y, x, sr))
            if k == 0:
                ex["audio"] = (x, y, sr)
        fig["audio_log_mel_distance"] = float(np.mean(vals))

    texts = [json.loads(line)["segments"][0]["text"] for line in (data / "text.jsonl").read_text().splitlines()]
    chars = sum(len(t) for t in texts)
    fig["text_chars_per_token"] = chars / max(1, sum(len(toks["text"].encode(t)) for t in texts))
    return fig, ex


# ---------------------------------------------------------------------------------------------- drawing
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(rows: list[tuple[str, list[np.ndarray]]], titles: list[str] | None, path: Path, cell: float = 1.6) -> None:
    """Rows of uint8 images with a label per row (and titles over the first row's columns)."""
    plt = _plt()
    ncol = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(cell * ncol + 1.2, cell * len(rows) + 0.4), squeeze=False)
    for i, (label, ims) in enumerate(rows):
        for j in range(ncol):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(ims):
                ax.imshow(ims[j], interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0 and titles and j < len(titles):
                ax.set_title(titles[j], fontsize=8)
        axes[i][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _spectrograms(items: list[tuple[str, torch.Tensor, int]], path: Path) -> None:
    from unitok.data.audio import log_mel

    plt = _plt()
    mels = [log_mel(wav.reshape(1, -1).float(), sr, 512, 128, 64)[0].numpy() for _, wav, sr in items]
    top = max(float(m.max()) for m in mels)
    fig, axes = plt.subplots(len(items), 1, figsize=(7, 1.8 * len(items) + 0.3), squeeze=False)
    for ax, (label, wav, sr), m in zip(axes[:, 0], items, mels):  # one colour scale: 5 decades below the loudest
        ax.imshow(m, origin="lower", aspect="auto", cmap="magma", extent=(0, wav.shape[-1] / sr, 0, m.shape[0]),
                  vmin=top - 5, vmax=top)
        ax.set_ylabel("mel band", fontsize=7)
        ax.set_title(label, fontsize=8)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- the report
def _num(x) -> str:
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _likeness(v: float, baseline: float, what: str) -> str:
    """Words for a PSNR against the target, next to a trivial baseline's, so the report never calls
    an output good that a flat or frozen picture would match: "close" needs 25 dB and 3 dB over the
    baseline, "partly" 1 dB over it."""
    if v >= 25 and v >= baseline + 3:
        return f"close to it ({what}: {baseline:.1f} dB)"
    if v >= baseline + 1:
        return f"partly like it ({what}: {baseline:.1f} dB)"
    return f"not like it: no closer than {what} ({baseline:.1f} dB)"


def _cer_words(c: float) -> str:
    return "close to it" if c <= 0.1 else "partly like it" if c <= 0.5 else "not like it"


def _flat(img: np.ndarray) -> np.ndarray:
    """img's shape filled with its mean colour (the best flat picture: a baseline that knows the answer's colour)."""
    return np.broadcast_to(img.reshape(-1, 3).mean(0).round().astype(np.uint8), img.shape)


def write_report(out: Path, p, index: dict, tok_dirs: dict, shards_dir: Path, task, summary: dict,
                 results: list[dict], stages: list[dict], heldout: dict) -> dict:
    from unitok.data.audio import write_wav
    from unitok.data.shards import read_shards, unigram_entropy
    from unitok.metrics import cer, psnr
    from unitok.tokenizers.base import load_tokenizer
    from unitok.reporting import plot_curves

    toks = {m: load_tokenizer(d) for m, d in tok_dirs.items()}
    for t in toks.values():
        if hasattr(t, "eval"):
            t.eval()
    fig, ex = tokenizer_figures(out, p, index, toks)
    sh = read_shards(shards_dir)
    ent = unigram_entropy(sh, task.data.train_docs)
    hist = task.engine.history
    for m in MODALITIES:
        if m in ent:
            fig[f"train_tokens_{m}"] = ent[m][0]
            fig[f"unigram_entropy_{m}"] = ent[m][1]
        if f"eval_loss_{m}" in summary:  # the trainer's baselines are of the same held-out targets
            fig[f"heldout_loss_{m}"] = summary[f"eval_loss_{m}"]
            fig[f"baseline_{m}"], fig[f"baseline_level_{m}"] = summary[f"baseline_{m}"], summary[f"baseline_level_{m}"]
        last = next((r[f"loss_{m}"] for r in reversed(hist) if f"loss_{m}" in r), None)
        if last is not None:
            fig[f"train_loss_{m}"] = last
    fig.update(lm_params=task.model.num_params(), lm_steps=summary["steps"], lm_minutes=summary["minutes"],
               lm_tokens=summary["steps"] * task.tokens_per_step)
    plot_curves(hist, out / "loss.png", {m: fig[f"baseline_level_{m}"] for m in MODALITIES if f"baseline_level_{m}" in fig},
                task.tokens_per_step)

    # generation: outputs next to what they were asked for
    by = {r["task"]: r for r in results}
    rel = lambda f: os.path.relpath(f, out)  # noqa: E731
    pics = out / "pictures"
    notes: dict[str, str] = {}
    for t, r in by.items():
        res = r["result"]
        fig[f"gen_seconds_{t}"] = res.timings["total_s"]
        fig[f"gen_tokens_per_s_{t}"] = res.timings["tokens_per_s"]
    if "text-to-image" in by:
        r = by["text-to-image"]
        a, b = ex[f"image:{r['photo']['photo']}"]
        g = r["result"].samples[0].media
        fig["t2i_psnr_vs_original_db"] = v = psnr(g, a)
        fig["t2i_psnr_vs_reconstruction_db"] = psnr(g, b)
        fig["t2i_flat_baseline_psnr_db"] = base = psnr(_flat(a), a)
        _grid([("text-to-image", [a, b, g])], ["original", "tokenizer", "generated"], pics / "text-to-image.png")
        notes["text-to-image"] = (f"{g.shape[1]}x{g.shape[0]} PNG; PSNR {v:.1f} dB against the photo (the tokenizer's "
                                  f"own reconstruction: {psnr(b, a):.1f} dB): "
                                  f"{_likeness(v, base, 'a flat image of its mean colour')}")
    if "image-to-image" in by:
        r = by["image-to-image"]
        a, b = ex[f"image:{r['photo']['photo']}"]
        g = r["result"].samples[0].media
        h = r["result"].settings["given_rows"] * toks["image"].downsample
        given = b.copy()
        given[h:] = 128
        fig["i2i_lower_psnr_vs_original_db"] = v = psnr(g[h:], a[h:])
        fig["i2i_flat_baseline_psnr_db"] = base = psnr(_flat(a[h:]), a[h:])
        _grid([("image-to-image", [a, b, given, g])], ["original", "tokenizer", "given (upper half)", "completed"],
              pics / "image-to-image.png")
        notes["image-to-image"] = (f"{g.shape[1]}x{g.shape[0]} PNG; the generated lower half has PSNR {v:.1f} dB "
                                   f"against the photo's: "
                                   f"{_likeness(v, base, 'a flat fill of its mean colour')}")
    if "video-continuation" in by:
        r = by["video-continuation"]
        a, b = ex[f"video:{r['clip']['file']}"]
        g = r["result"].samples[0].media
        k = r["given_frames"]
        fig["video_generated_frames_psnr_db"] = v = psnr(g[k:], a[k:len(g)])
        fig["video_frozen_baseline_psnr_db"] = base = psnr(np.broadcast_to(a[k - 1], g[k:].shape), a[k:len(g)])
        _grid([("original", list(a)), ("tokenizer", list(b)), ("continued", list(g))],
              [f"frame {i}" + (" (given)" if i < k else "") for i in range(len(g))], pics / "video-continuation.png",
              cell=1.0)
        notes["video-continuation"] = (f"{len(g)} frames of {g.shape[2]}x{g.shape[1]}; the {len(g) - k} generated "
                                       f"frames have PSNR {v:.1f} dB against the clip's: "
                                       f"{_likeness(v, base, 'repeating the last given frame')}")
    for t in ("image-to-text", "audio-to-text"):
        if t in by:
            r = by[t]
            c = fig[f"{t.split('-')[0]}_to_text_cer"] = cer(r["result"].samples[0].text.strip(), r["reference"])
            notes[t] = f"character error rate {c:.2f} against the true text: {_cer_words(c)}"
    if "text-to-text" in by:
        notes["text-to-text"] = "the model's continuation of the prompt; pydoc is the only prose it saw"
    audio_rows = []
    if "audio" in ex:
        x, y, sr = ex["audio"]
        d = out / "audio"
        d.mkdir(parents=True, exist_ok=True)
        write_wav(d / "original.wav", x, sr)
        write_wav(d / "tokenizer.wav", y, sr)
        items = [("eSpeak NG original (resampled to the codec's rate)", x, sr), ("tokenizer reconstruction", y, sr)]
        audio_rows += [("original (eSpeak NG)", rel(d / "original.wav")), ("tokenizer", rel(d / "tokenizer.wav"))]
        if "text-to-audio" in by:
            s = by["text-to-audio"]["result"].samples[0]
            shutil.copyfile(s.file, d / "generated.wav")
            items.append(("generated (text-to-audio)", torch.from_numpy(s.media), sr))
            audio_rows.append(("generated", rel(d / "generated.wav")))
            rms = lambda w: float(np.sqrt(np.mean(np.square(np.asarray(w, np.float64)))))  # noqa: E731
            notes["text-to-audio"] = (f"{s.media.shape[-1] / sr:.2f} s WAV at {sr} Hz, RMS level {rms(s.media):.3f} "
                                      f"(the spoken caption: {rms(x):.3f}); whether it is speech is not measured "
                                      f"here: listen, and compare the spectrograms")
        _spectrograms(items, d / "spectrograms.png")

    bad = [k for k, v in fig.items() if not (isinstance(v, (int, float)) and math.isfinite(v))]
    if bad:
        raise RuntimeError(f"the demo measured non-finite figures: {bad}")
    (out / "report.md").write_text(_markdown(out, p, index, fig, sh, summary, by, notes, stages, heldout,
                                             audio_rows, rel, task))
    return fig


def _markdown(out, p, index, fig, sh, summary, by, notes, stages, heldout, audio_rows, rel, task) -> str:
    st = sh.stats
    tpm = st["tokens_per_modality"]
    speech_line = (f"{len(index['speech'])} utterances ({sum(s['seconds'] for s in index['speech']):.0f} s): the "
                   f"captions spoken by eSpeak NG in {len({s['voice'] for s in index['speech']})} voices"
                   if index["speech"] else f"none: {index['speech_error']}")
    total_min = sum(s["seconds"] for s in stages) / 60
    budget = lambda s: "-" if s["budget_s"] is None else f"{s['budget_s']:.0f}"  # noqa: E731
    stage_rows = "\n".join(f"| {s['stage']} | {budget(s)} | {s['seconds']:.1f} |" for s in stages)
    stage_rows += f"\n| **the stages above** | {p.minutes * 60:.0f} | {sum(s['seconds'] for s in stages):.1f} |"
    mod_rows = "\n".join(
        f"| {m} | {_num(fig[f'train_tokens_{m}'])} | {fig[f'unigram_entropy_{m}']:.3f} | {fig[f'train_loss_{m}']:.3f} | "
        f"{fig[f'heldout_loss_{m}']:.3f} | {fig[f'baseline_{m}']:.3f} | {fig[f'baseline_level_{m}']:.3f} |"
        for m in MODALITIES if all(f"{k}_{m}" in fig for k in ("heldout_loss", "unigram_entropy", "train_loss")))
    tok_rows = [("image tokenizer PSNR (dB), photos at " f"{p.policy.image_size} px", fig["image_psnr_db"]),
                (f"video tokenizer PSNR (dB), clips at {p.policy.video_size} px", fig["video_psnr_db"])]
    if "audio_log_mel_distance" in fig:
        tok_rows.append(("audio tokenizer log-mel distance (log10 units, lower is better)",
                         fig["audio_log_mel_distance"]))
    tok_rows.append(("text tokenizer characters per token (pydoc text)", fig["text_chars_per_token"]))
    quality = [(k, v) for k, v in (
        ("text-to-image PSNR vs the photo (dB)", fig.get("t2i_psnr_vs_original_db")),
        ("text-to-image PSNR vs the tokenizer's reconstruction (dB)", fig.get("t2i_psnr_vs_reconstruction_db")),
        ("baseline: a flat image of the photo's mean colour (dB)", fig.get("t2i_flat_baseline_psnr_db")),
        ("image-to-image PSNR of the generated lower half (dB)", fig.get("i2i_lower_psnr_vs_original_db")),
        ("baseline: the lower half filled with its mean colour (dB)", fig.get("i2i_flat_baseline_psnr_db")),
        ("video-continuation PSNR of the generated frames (dB)", fig.get("video_generated_frames_psnr_db")),
        ("baseline: the last given frame repeated (dB)", fig.get("video_frozen_baseline_psnr_db")),
        ("image-to-text character error rate", fig.get("image_to_text_cer")),
        ("audio-to-text character error rate", fig.get("audio_to_text_cer"))) if v is not None]
    tok_table = "\n".join(f"| {k} | {v:.3g} |" for k, v in tok_rows)
    q_table = "\n".join(f"| {k} | {v:.3g} |" for k, v in quality)
    gen_table = "\n".join(f"| {t} | {r['result'].timings['total_s']:.2f} | {r['result'].timings['new_tokens']} | "
                          f"{r['result'].timings['tokens_per_s']:.0f} |" for t, r in by.items())
    lm_table = "\n".join(f"| {k} | {_num(v)} |" for k, v in (
        ("parameters", fig["lm_params"]), ("steps", fig["lm_steps"]), ("training tokens", fig["lm_tokens"]),
        ("training minutes", fig["lm_minutes"]), ("held-out documents", heldout["documents"]),
        ("held-out tokens", heldout["tokens"])))

    def out_line(t):
        r = by[t]
        res = r["result"]
        files = ", ".join(f"[{f.name}]({rel(f)})" for f in res.files)
        s = res.samples[0]
        if s.text is not None:  # in a fenced block: generated text may hold newlines and markdown
            ref = f"; the true text: *{r['reference']}*" if "reference" in r else ""
            lines = (s.text.strip().replace("```", "'''") or "(empty)").splitlines()
            body = "\n".join("  " + line for line in lines)
            shown = f"\n\n  ```text\n{body}\n  ```\n\n  ({notes.get(t, '')}{ref})"
        else:
            shown = f" — {notes.get(t, '')}"
        prompt = f"prompt *{res.prompt}*" if res.prompt else "no text prompt"
        ins = ", ".join(f"{k} `{rel(v)}`" for k, v in res.inputs.items())
        return f"- **{t}** ({prompt}{', ' + ins if ins else ''}; {res.timings['total_s']:.2f} s): {files}{shown}"

    gen_lines = "\n".join(out_line(t) for t in by)
    skipped = "" if index["speech"] else (f"\ntext-to-audio and audio-to-text were skipped: no speech data "
                                          f"({index['speech_error']}).\n")
    pictures = "\n".join(f"![{t}](pictures/{t}.png)" for t in ("text-to-image", "image-to-image", "video-continuation")
                         if t in by)
    audio = ""
    if audio_rows:
        audio = ("\n### Speech\n\n" + "\n".join(f"- {k}: [{Path(f).name}]({f})" for k, f in audio_rows) +
                 "\n\n![spectrograms](audio/spectrograms.png)\n")
    vs = [m for m in MODALITIES if f"heldout_loss_{m}" in fig]
    below = [m for m in vs if fig[f"heldout_loss_{m}"] < fig[f"baseline_level_{m}"]]  # the lower of the two
    verdict = (f"Held-out loss is below the fair baseline (the held-out tokens' cross-entropy under the training "
               f"tokens' frequencies given the residual level: the model has learned more than token "
               f"frequencies) for: {', '.join(below) or 'no modality'}; not for: "
               f"{', '.join(m for m in vs if m not in below) or 'none'}.")
    mode = "tiny mode (a smoke test: a few steps of everything)" if p.tiny else f"--minutes {p.minutes:g}"
    if p.preset != "cpu":
        mode += f", --preset {p.preset}"
    where = f" and {torch.cuda.get_device_name()}" if p.torch_device() == "cuda" else ""
    cmd = (f"unitok demo --out {out} " + ("--tiny" if p.tiny else f"--minutes {p.minutes:g}") + f" --seed {p.seed}"
           + (f" --preset {p.preset}" if p.preset != "cpu" else "") + (f" --device {p.device}" if p.device != "auto" else ""))
    return f"""# unitok demo: text, images, video and speech in one model

One command made a small multimodal data set from what the installed packages ship, trained a tokenizer
per modality and one unified transformer on all of them, and ran every generation task; {mode}, in
{total_min:.1f} minutes with {p.threads} CPU thread(s){where}.

**What to expect.** On a CPU, in minutes, the point is that every output *decodes*: images, clips and
speech of the requested sizes, and text. Do not expect them to be good. Each output below comes with
figures that say how far it is from the data it was asked for, next to a trivial baseline (a flat or
a frozen picture), and with words that follow those numbers ("close": at least 25 dB and 3 dB over
the baseline; "partly": 1 dB over the baseline; for captions and transcripts, a character error rate
of at most 0.1 and 0.5).

## Data

| kind | documents | tokens in the shards | what |
| --- | --- | --- | --- |
| images | {len(index['images'])} | {tpm.get('image', 0):,} | {p.data.crops} square crops of each of {p.data.photos} scikit-image photos, each with a caption written for the demo; {p.policy.image_size} px |
| video | {len(index['video'])} | {tpm.get('video', 0):,} | {p.data.clip_frames}-frame clips ({p.data.clip_fps:g} fps) panning over or zooming into the photos, captioned with the motion; {p.policy.video_size} px |
| speech | {len(index['speech'])} | {tpm.get('audio', 0):,} | {speech_line} |
| text | {index['text_documents']} | {tpm.get('text', 0):,} (all text, captions included) | {index['text_chars']:,} characters of Python's pydoc topics |

Folders with same-stem captions (`data/images`, `data/video`), `data/speech/transcripts.tsv` and
`data/text.jsonl`, tokenized by `unitok pretokenize` into `shards/` ({st['documents']} documents,
{st['tokens']:,} tokens, {len(st['skipped'])} skipped). Pairs put the text first or the media first
(a seeded choice per document), so both directions are trained. {heldout['documents']} documents
({heldout['fraction']:.0%}) are held out from the unified model, by source (text in blocks of consecutive
documents): {'; '.join(f"{k}: {r}" for k, r in heldout['kinds'].items())}.

## Stages

| stage | budget (s) | took (s) |
| --- | --- | --- |
{stage_rows}

Budgets are shares of `--minutes` ({', '.join(f'{k} {v:.0%}' for k, v in p.shares.items())}); the unified
model gets what is left when it starts, less the generation reserve.

## Tokenizers and the unified model

Tokenizers (`runs/*-tokenizer`): image: the `debug` VQ-GAN preset (f4, 128 codes);
video: the `debug` causal 3D VQ (4x in time, 4x in space, 128 codes); audio: a 16 kHz EnCodec with
hop 320 and 2 RVQ levels of 256 codes (100 tokens/s); text: SentencePiece BPE. The unified model
(`runs/unified`, `unitok train`'s trainer): {fig['lm_params']:,} parameters, {fig['lm_steps']} steps.

![loss per modality](loss.png)

{verdict} Held-out images, clips and utterances are other crops, motions and voices of the same photos and
sentences as training ones, so for media the held-out loss measures memorisation of these photos and
sentences as much as generalisation; the held-out pydoc documents are prose the model has not seen.

## Generation

Every task of `unitok.generation.Pipeline` on `runs/unified`, seed {p.seed}; the inputs and prompts
are the demo's own training items, so even memorised data would show here.

{gen_lines}
{skipped}
{pictures}
{audio}
## Figures

Tokenizers, measured on the demo's own data (which they were trained on):

| figure | value |
| --- | --- |
{tok_table}

Unified model, per modality (nats per token; unigram entropy: of the training tokens' frequencies, a
statistic of the training data; baseline: the held-out tokens' cross-entropy under those frequencies
(add-one smoothed), and the same given the residual level of the next code: a model below it has
learned more than token frequencies):

| modality | training tokens | unigram entropy | last training loss | held-out loss | baseline | baseline given the level |
| --- | --- | --- | --- | --- | --- | --- |
{mod_rows}

| unified model | value |
| --- | --- |
{lm_table}

Generation (CPU; one sample per task):

| task | seconds | new tokens | tokens/s |
| --- | --- | --- | --- |
{gen_table}

| output against its target | value |
| --- | --- |
{q_table}

## Reproduce

`{cmd}` (figures.json holds every number above).
"""
