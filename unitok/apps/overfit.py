"""`unitok bench overfit` (here, not in unitok/bench: it trains, and bench sits below the trainers):
can the whole chain memorise? A tiny unified model trained on a handful of
image-caption and speech-transcript pairs must give back the right image for each caption, the right
caption for each image and the right transcript for each recording.

    unitok bench overfit --out runs/overfit --pairs 4 --minutes 8 --json out/overfit.json

Data: the first --pairs scikit-image photos of the demo (`unitok.data.embedded`; the centre crop, its
caption) and each caption spoken once by eSpeak NG. Tokenizers: the demo's recipes (64 px images as
16 x 16 codes of 128, speech at 100 tokens/s), trained briefly on these files: the check is on the
language model, so their quality only sets the reference (the model is compared with the tokenizer's
own reconstruction). Every pair is a document in both orders (text then media, media then text), so
both directions are learned; no held-out split, no condition dropout. The model trains for
--minutes (wall clock, the schedule decays to its end), then, greedily (temperature 0):

* text-to-image for each caption: PSNR of the generated image against the photo (as pretokenization
  sees it) and against the tokenizer's reconstruction. Pass: within 1 dB of the reconstruction's own
  PSNR against the photo, and >= 25 dB against the reconstruction.
* image-to-text for each image and audio-to-text for each recording: character error rate against
  the caption. Pass: <= 0.1.

The JSON has every item, the means, the pass flags, the steps, the final training loss and timings.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

__all__ = ["run", "PSNR_MIN_DB", "PSNR_SLACK_DB", "CER_MAX"]

PSNR_MIN_DB = 25.0  # generated vs the tokenizer's reconstruction
PSNR_SLACK_DB = 1.0  # generated vs photo at most this far below reconstruction vs photo
CER_MAX = 0.1


def _write_pairs(data: Path, index: dict) -> Path:
    """docs.jsonl: each (caption, image) and (transcript, audio) pair in both orders."""
    lines = []
    for x in [i for i in index["images"] if i["centre"]]:
        for segs in ([{"text": x["caption"]}, {"image": x["file"]}], [{"image": x["file"]}, {"text": x["caption"]}]):
            lines.append(json.dumps({"segments": segs}))
    for s in index["speech"]:
        for segs in ([{"text": s["text"]}, {"audio": s["file"]}], [{"audio": s["file"]}, {"text": s["text"]}]):
            lines.append(json.dumps({"segments": segs}))
    (data / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return data / "docs.jsonl"


def run(args) -> int:
    import torch

    from unitok.reporting import write_json
    from unitok.data.embedded import EmbeddedConfig, write_embedded_data
    from unitok.data.policy import image_input
    from unitok.data.pretokenize import pretokenize
    from unitok.apps.demo import encodec_stage, plan, text_tokenizer_stage, vqgan_stage, with_budget
    from unitok.errors import ConfigError, DataError
    from unitok.generation import Pipeline
    from unitok.metrics import cer, psnr
    from unitok.data.media import to_uint8
    from unitok.tokenizers.base import load_tokenizer
    from unitok.training.unified import train_unified

    if not 1 <= args.pairs <= 8:
        raise ConfigError(f"--pairs must be in [1, 8], got {args.pairs}")
    if not args.minutes > 0:
        raise ConfigError(f"--minutes must be positive, got {args.minutes:g}")
    t0 = time.perf_counter()
    out = Path(args.out)
    p = plan(seed=args.seed)
    data_cfg = EmbeddedConfig(photos=args.pairs, crops=1, motions=[], voices_per_sentence=1, pydoc_chars=20_000,
                              seed=args.seed)
    index = write_embedded_data(out / "data", data_cfg, log=lambda s: print(f"overfit: {s}", flush=True))
    if index["speech_error"]:
        raise DataError(f"bench overfit needs speech: {index['speech_error']}")
    tok_s = args.tokenizer_seconds
    tok_dirs = {"text": text_tokenizer_stage(out, index, 512),
                "image": vqgan_stage(with_budget(p.image, tok_s), out / "data" / "images",
                                     out / "runs" / "image-tokenizer"),
                "audio": encodec_stage(with_budget(p.audio, tok_s), out / "data" / "speech",
                                       out / "runs" / "audio-tokenizer")}
    t_tok = time.perf_counter()
    docs = _write_pairs(out / "data", index)
    shards = out / "shards"
    stats = pretokenize([docs], list(tok_dirs.values()), shards, p.policy, progress=False)
    if stats["skipped"]:
        raise DataError(f"bench overfit: pretokenization skipped {stats['skipped']}")
    lm = p.lm
    lm = replace(lm, eval_fraction=0.0, cond_dropout=0.0, batch_size=args.batch_size, seq_len=512,
                 optim=replace(lm.optim, lr=args.lr, weight_decay=0.0),
                 run=replace(lm.run, max_minutes=args.minutes, log_every=50, seed=args.seed))
    t_train = time.perf_counter()
    task, summary = train_unified(lm, shards, out / "runs" / "unified")
    train_s = time.perf_counter() - t_train
    last = next(r["loss"] for r in reversed(task.engine.history) if "loss" in r)

    pipe = Pipeline.from_pretrained(out / "runs" / "unified")
    itok = load_tokenizer(tok_dirs["image"]).eval()
    px = p.policy.image_size
    items = []
    for x in [i for i in index["images"] if i["centre"]]:
        f = out / "data" / x["file"]
        inp = image_input(f, px)
        with torch.no_grad():
            rec = to_uint8(itok.decode(itok.encode(inp)))[0]
        photo = to_uint8(inp)[0]
        g = pipe("text-to-image", prompt=x["caption"], temperature=0, repetition_penalty=1.0,
                 seed=args.seed).samples[0].media
        cap = pipe("image-to-text", image=f, temperature=0, repetition_penalty=1.0, max_new_tokens=48,
                   seed=args.seed).samples[0].text
        r_vs_photo, g_vs_photo, g_vs_rec = psnr(rec, photo), psnr(g, photo), psnr(g, rec)
        items.append({"kind": "image", "photo": x["photo"], "caption": x["caption"], "generated_caption": cap,
                      "cer": cer(cap.strip(), x["caption"]), "psnr_reconstruction_vs_photo_db": r_vs_photo,
                      "psnr_generated_vs_photo_db": g_vs_photo, "psnr_generated_vs_reconstruction_db": g_vs_rec,
                      "image_pass": g_vs_photo >= r_vs_photo - PSNR_SLACK_DB and g_vs_rec >= PSNR_MIN_DB})
    for s in index["speech"]:
        hyp = pipe("audio-to-text", audio=out / "data" / s["file"], temperature=0, repetition_penalty=1.0,
                   max_new_tokens=48, seed=args.seed).samples[0].text
        items.append({"kind": "speech", "file": s["file"], "transcript": s["text"], "generated_transcript": hyp,
                      "cer": cer(hyp.strip(), s["text"])})
    imgs = [i for i in items if i["kind"] == "image"]
    caps = [i["cer"] for i in imgs]
    trans = [i["cer"] for i in items if i["kind"] == "speech"]
    res = {
        "pairs": args.pairs, "minutes": args.minutes, "steps": summary["steps"], "final_train_loss": last,
        "params": task.model.num_params(), "train_tokens": stats["tokens"], "documents": stats["documents"],
        "image_psnr_generated_vs_photo_db": float(np.mean([i["psnr_generated_vs_photo_db"] for i in imgs])),
        "image_psnr_reconstruction_vs_photo_db": float(np.mean([i["psnr_reconstruction_vs_photo_db"] for i in imgs])),
        "image_psnr_generated_vs_reconstruction_db": float(np.mean([i["psnr_generated_vs_reconstruction_db"]
                                                                     for i in imgs])),
        "caption_cer": float(np.mean(caps)), "transcript_cer": float(np.mean(trans)),
        "pass_image": all(i["image_pass"] for i in imgs), "pass_caption": max(caps) <= CER_MAX,
        "pass_transcript": max(trans) <= CER_MAX,
        "criteria": f"each image: generated vs photo >= reconstruction vs photo - {PSNR_SLACK_DB} dB and generated vs "
                    f"reconstruction >= {PSNR_MIN_DB} dB; each caption and transcript: CER <= {CER_MAX}",
        "seconds": {"tokenizers": round(t_tok - t0, 1), "train": round(train_s, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "items": items,
    }
    res["pass"] = res["pass_image"] and res["pass_caption"] and res["pass_transcript"]
    write_json(res, args.json or out / "overfit.json")
    for i in items:
        if i["kind"] == "image":
            print(f"overfit: {i['photo']}: generated image {i['psnr_generated_vs_photo_db']:.2f} dB vs photo "
                  f"(tokenizer {i['psnr_reconstruction_vs_photo_db']:.2f}), {i['psnr_generated_vs_reconstruction_db']:.2f}"
                  f" dB vs reconstruction; caption CER {i['cer']:.3f} {i['generated_caption']!r}")
        else:
            print(f"overfit: {i['file']}: transcript CER {i['cer']:.3f} {i['generated_transcript']!r}")
    print(f"overfit: {summary['steps']} steps in {train_s / 60:.1f} min, final training loss {last:.4f}; "
          f"images {'pass' if res['pass_image'] else 'FAIL'}, captions {'pass' if res['pass_caption'] else 'FAIL'}, "
          f"transcripts {'pass' if res['pass_transcript'] else 'FAIL'} -> {args.json or out / 'overfit.json'}")
    return 0 if res["pass"] else 1
