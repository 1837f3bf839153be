"""The `unitok` command line.

Every subcommand is defined here (so `--help` is complete and cheap) and runs a
`module:function` from the library, imported only when it runs. A handler takes
the parsed `argparse.Namespace` and returns an exit status (None means 0).
User mistakes raise `UnitokError`; they are printed on one line, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from unitok.errors import UnitokError

LM_EPILOG = ("Configs take key=value overrides after the config path, e.g. `optim.lr=3e-4 run.max_steps=500 "
             "model.n_layer=4`; "
             "`model.attention=triton model.norm_backend=triton model.ce_backend=triton` runs the fused "
             "kernels (on a GPU; on CPU they run in Triton's slow interpreter).")
TOKENIZER_EPILOG = ("Recipes take key=value overrides after the config path, e.g. `optim.lr=3e-4 run.max_minutes=5 "
                    "data.batch_size=4`. Every recipe shares the blocks `optim` (lr, betas, weight_decay, schedule, "
                    "warmup_steps, min_lr_ratio, grad_clip, grad_accum) and `run` (max_steps, max_minutes, seed, "
                    "threads, device, log_every, ckpt_every, ckpt_every_min, max_bad_steps).")
RESUME_HELP = "continue from the checkpoint in --out (the recipe must be the one it was written with)"
CHANGE_HELP = ("with --resume: continue although the recipe changed (budgets, cadence and threads may always "
               "change)")


def _add(sub, name: str, handler: str, help: str, description: str | None = None,
         epilog: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description or help, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=handler)
    return p


def _train_args(p, config: str, data: str, out: str) -> None:
    """The arguments every trainer takes: recipe, overrides, data, run directory, resume."""
    p.add_argument("config", help=config)
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--data", required=True, help=data)
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--resume", action="store_true", help=RESUME_HELP)
    p.add_argument("--allow-recipe-change", action="store_true", help=CHANGE_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unitok",
        description="Unified discrete-token multimodal models: tokenizers, one vocabulary, one transformer.",
    )
    parser.add_argument("--version", action="version", version=f"unitok {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    # --- demo
    p = _add(sub, "demo", "unitok.apps.demo:run", "end-to-end multimodal demo on embedded data; writes report.md",
             "Make a small data set from what the installed packages ship (scikit-image's photos with captions,\n"
             "pan and zoom clips of them, the captions spoken by eSpeak NG, Python's pydoc text), train a\n"
             "tokenizer per modality and one unified model on it, run every generation task, and write\n"
             "OUT/report.md (pictures, sounds, spectrograms, loss curves per modality, a table of figures).\n"
             "Stages share the --minutes budget (image tokenizer 17%, audio 14%, video 12%, unified model\n"
             "what is left less 6% for generation and the report); each prints the time it took.\n"
             "Without eSpeak NG the demo says so and runs without speech. docs/demo.md describes it.",
             epilog="examples:\n"
                    "  unitok demo --out runs/demo               # 9 minutes of stages, for 2 CPU cores\n"
                    "  unitok demo --out /tmp/demo --tiny        # every stage with tiny budgets (< 1 min)\n"
                    "  unitok demo --out runs/demo-gpu --device cuda --preset gpu --minutes 15   # one GPU")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where every stage trains and generates (default: auto, CUDA when torch finds it)")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu"],
                   help="cpu: sized for 2 CPU cores (default); gpu: 128 px images, 64 px clips, an 8-layer dim-512 "
                        "model on rows of 2,048 tokens (for one GPU; give it --minutes too)")
    p.add_argument("--minutes", type=float, default=None,
                   help="time budget of the stages in minutes (default: 9; with --tiny: 1, a guard)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny data, models and step counts: every stage and output in well under a minute")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)

    # --- text
    text = sub.add_parser("text", help="text tokenizer").add_subparsers(dest="text_command", metavar="COMMAND")
    text.required = True
    p = _add(text, "train-tokenizer", "unitok.tokenizers.text:train_cli", "train a SentencePiece BPE tokenizer (byte fallback)")
    p.add_argument("files", nargs="+", help="UTF-8 text files")
    p.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size (default: 8000)")
    p.add_argument("--out", required=True, help="directory to save the tokenizer in")
    p = _add(text, "encode", "unitok.tokenizers.text:encode_cli", "print the ids of a string")
    p.add_argument("tokenizer", help="directory written by `unitok text train-tokenizer`")
    p.add_argument("text", help="text to encode")

    # --- lm
    lm = sub.add_parser("lm", help="unified language model").add_subparsers(dest="lm_command", metavar="COMMAND")
    lm.required = True
    p = _add(lm, "train", "unitok.training.lm:run_cli", "train the transformer on a text file (or under torchrun)",
             epilog=LM_EPILOG)
    _train_args(p, "run config YAML, e.g. configs/train/text-lm.yaml", "training text file",
                "run directory (checkpoints, logs)")
    p.add_argument("--eval-data", default=None, help="evaluation text file (default: last 10%% of --data)")
    p = _add(lm, "sample", "unitok.generation.sample:run_cli", "generate text from a checkpoint")
    p.add_argument("checkpoint", help="run directory or checkpoint directory")
    p.add_argument("--prompt", default="", help="text prompt")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate (default: what the context has room for after the prompt)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)

    # --- tokenizer (image / video / audio)
    tk = sub.add_parser("tokenizer", help="image, video and audio tokenizers").add_subparsers(dest="tk_command", metavar="COMMAND")
    tk.required = True
    p = _add(tk, "train", "unitok.training.tokenizer:run", "train a tokenizer from a recipe",
             "Train an image, video or audio tokenizer from a recipe (tokenizers/<name>/config.yaml).\n"
             "The recipe's `modality` picks the trainer. Unreadable files are skipped and counted.",
             epilog=TOKENIZER_EPILOG)
    _train_args(p, "recipe YAML, e.g. tokenizers/image-vqgan-f8/config.yaml", "folder of images, videos or audio files",
                "output directory (checkpoints, samples, final tokenizer)")
    p = _add(tk, "bench", "unitok.apps.bench_tokenizer:run", "codebook reconstruction benchmark against classic codecs",
             "Reconstruct every file in --data with a trained tokenizer and report fidelity, codebook usage,\n"
             "rate and speed, next to JPEG/WebP (images) or Opus (audio) at the matched rate, in one run.")
    p.add_argument("tokenizer", help="directory written by save_pretrained (e.g. OUT/final of `tokenizer train`)")
    p.add_argument("--data", required=True, help="folder of held-out images, videos or audio files")
    p.add_argument("--json", required=True, help="where to write the JSON results")
    p.add_argument("--out", default=None, help="folder for the table, plots and grids (default: beside --json)")
    p.add_argument("--max-files", type=int, default=None, help="use at most this many files")
    p.add_argument("--usage-data", default=None,
                   help="images or audio for the codebook-usage figure when --data gives fewer than --usage-tokens "
                        "tokens per level (e.g. the training folder; default: --data)")
    p.add_argument("--usage-tokens", type=int, default=None,
                   help="tokens per level the usage figure counts at least (default: 20 x codebook size)")
    p.add_argument("--train-data", default=None,
                   help="audio: the training folder; with a SOURCES.tsv (language, seconds), the bench names the "
                        "held-out language seen least in training and scores it")

    # --- bench
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench_command", metavar="COMMAND")
    bench.required = True
    p = _add(bench, "text-lm", "unitok.apps.bench_text_lm:run", "text LM quality in nats per character",
             "Train the default text config on the first 90% of FILE for at most M minutes and report\n"
             "nats/char (total token NLL / characters) on the last 10% (and on --eval-data).")
    p.add_argument("--data", required=True, help="text file")
    p.add_argument("--eval-data", default=None, help="extra evaluation text file")
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget (default: 10)")
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--config", default=None, help="run config (default: configs/train/text-lm.yaml)")
    p.add_argument("--seed", type=int, default=0)
    p = _add(bench, "train", "unitok.apps.bench_train:run", "training throughput: the engine vs a bare loop",
             "Train the config's unified model for --steps steps with the engine and with a bare PyTorch loop\n"
             "(same model, device, batches, loss and parameter groups), --repeats times, the first loop alternating;\n"
             "report tokens/s of both, the engine/bare ratio's min, median and max, the engine's data-wait share,\n"
             "peak memory and FLOP/s (MFU on a known GPU).")
    p.add_argument("config", help="unified run config, e.g. configs/train/unified-cpu.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--steps", type=int, default=30, help="steps per run (the first is not timed; default: 30)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each loop (default: 3)")
    p.add_argument("--data", default=None, help="token shards (default: synthetic documents)")
    p.add_argument("--json", required=True, help="where to write the results")
    p = _add(bench, "rd", "unitok.apps.bench_rd:run", "rate-distortion figure: our presets and the classical curves",
             "Plot the tokenizers' points from `unitok tokenizer bench` JSON files (measured on --data) beside the\n"
             "classical curves computed here on the same material: JPEG/WebP at full size and downscaled 2/4/8x\n"
             "(image, PSNR), Opus and Codec2 (audio, log-mel distance full band and 0-4 kHz), H.264 over a CRF\n"
             "sweep (video, PSNR). Writes OUT/rd.png and OUT/rd.json.")
    p.add_argument("modality", choices=["image", "audio", "video"])
    p.add_argument("--data", required=True, help="the held-out folder the bench JSON files were measured on")
    p.add_argument("--results", nargs="+", required=True, metavar="LABEL=JSON",
                   help="our points: a label and a `unitok tokenizer bench` JSON file, e.g. f16=runs/f16/heldout.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-files", type=int, default=None, help="use at most this many files")
    p = _add(bench, "generate", "unitok.apps.bench_generate:run", "decode speed: KV cache vs recomputation vs transformers",
             "Greedy decoding of --new-tokens tokens from random prompts with the sampler's KV cache, with full\n"
             "recomputation every step, and with transformers' LlamaForCausalLM.generate (use_cache=True) at the\n"
             "preset's dimensions (randomly initialised), per batch size, alternating --repeats times; also\n"
             "sampled decoding (--temperature, --top-k, a fixed seed) with the KV cache and with transformers'\n"
             "do_sample=True; prints a table of new tokens/s and writes every run to --json.")
    p.add_argument("--preset", default="small", help="model preset (unitok/model/config.py; default: small)")
    p.add_argument("--new-tokens", type=int, default=256, help="new tokens per row (default: 256)")
    p.add_argument("--prompt-len", type=int, default=16, help="prompt tokens per row (default: 16)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default: 1,8)")
    p.add_argument("--full-batch-sizes", default="1",
                   help="batch sizes at which full recomputation is also timed (default: 1; it costs about "
                        "new-tokens/2 forwards of the whole sequence per run, minutes per run at batch 8 on CPU)")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each (default: 3)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--temperature", type=float, default=0.8, help="of the sampled runs (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="of the sampled runs (default: 50)")
    p.add_argument("--json", required=True, help="where to write the results")
    p = _add(bench, "pretokenize", "unitok.apps.bench_pretokenize:run",
             "pretokenization throughput vs the tokenizers' own batched encode",
             "Runs `unitok pretokenize` on DATA into a temporary folder (end to end, --workers processes), then\n"
             "encodes the same documents' prepared inputs with each tokenizer in batches (all --threads); reports\n"
             "tokens/s of both and speed_ratio = encode seconds / pretokenize seconds.")
    p.add_argument("data", nargs="+", help="JSONL manifests, .tar shards or folders (as for pretokenize)")
    p.add_argument("--tokenizer", nargs="+", required=True, help="tokenizer directories")
    p.add_argument("--workers", type=int, default=2, help="pretokenize processes (default: 2)")
    p.add_argument("--batch-size", type=int, default=8, help="inputs per batched encode (default: 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the reference (default: all)")
    p.add_argument("--set", nargs="*", default=None, metavar="KEY=VALUE", help="pretokenize policy settings")
    p.add_argument("--json", required=True, help="where to write the results")
    p = _add(bench, "overfit", "unitok.apps.overfit:run", "memorisation check: image <-> caption, speech -> transcript",
             "Trains brief tokenizers and a tiny unified model on --pairs photos with captions and their captions\n"
             "spoken by eSpeak NG (each pair in both orders), then regenerates greedily: the image for each caption\n"
             "(PSNR vs the photo within 1 dB of the tokenizer's reconstruction, >= 25 dB vs the reconstruction),\n"
             "the caption for each image and the transcript for each recording (CER <= 0.1). Exit code 1 when a\n"
             "criterion fails; every item is in the JSON.")
    p.add_argument("--out", required=True, help="work folder (data, tokenizers, shards, run)")
    p.add_argument("--pairs", type=int, default=4, help="photos (and spoken captions) to memorise (default: 4)")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget of the unified model (default: 8)")
    p.add_argument("--tokenizer-seconds", type=float, default=60.0,
                   help="training budget of each media tokenizer (default: 60)")
    p.add_argument("--batch-size", type=int, default=8, help="rows of 512 tokens per step (default: 8)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="where to write the results (default: OUT/overfit.json)")
    p = _add(bench, "judge", "unitok.apps.bench_judge:run", "generation on the scenes task, scored by its judges",
             "Score text-to-image (GenEval-style checks), image-to-text (true statements), text-to-audio (WER of\n"
             "the speech judge), audio-to-text (WER) and video continuation (direction of motion) on the seen and\n"
             "held-out items of `unitok data scenes` data, beside `chance` (another item's output) and\n"
             "`nearest_training` (the closest training item's output). RUN scores a unified run's generations;\n"
             "--ground-truth the data's own media: the judges' accuracy. docs/judges.md describes the judges.",
             epilog="examples:\n  unitok bench judge --data data/scenes --ground-truth --json runs/judges.json\n"
                    "  unitok bench judge runs/scenes/run --data data/scenes --json runs/judge.json --out runs/judge")
    p.add_argument("run", nargs="?", default=None, help="a unified run to score (e.g. from scripts/train_scenes.py)")
    p.add_argument("--data", required=True, help="folder written by `unitok data scenes`")
    p.add_argument("--ground-truth", action="store_true", help="score the data's own media and texts")
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--max-items", type=int, default=None, help="at most this many items per task and split")
    p.add_argument("--out", default=None, help="RUN: a folder for the picture grid (text_to_image.png)")
    p.add_argument("--head", choices=["discrete", "diffusion"], default="discrete",
                   help="RUN: the head that generates media (default: discrete; diffusion is not built yet)")
    p.add_argument("--seed", type=int, default=0, help="RUN: the sampling seed (default: 0)")
    p.add_argument("--cfg", type=float, default=1.0, help="RUN: guidance scale inside media spans (default: 1, off)")
    p = _add(bench, "kernels", "unitok.apps.bench_kernels:run", "fused kernels vs. torch (timing needs a GPU)")
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--quick", action="store_true", help="fewer shapes")
    p.add_argument("--seq-lens", default=None,
                   help="attention sequence lengths, comma-separated (default: 1024,...,16384; --quick: 8192)")
    p.add_argument("--ops", default="attention,ce,rms_norm", help="which benchmarks to run (default: all three)")

    # --- checkpoint
    ck = sub.add_parser("checkpoint", help="export, convert and import checkpoints").add_subparsers(
        dest="checkpoint_command", metavar="COMMAND")
    ck.required = True
    p = _add(ck, "export", "unitok.checkpoint:export_cli", "write a consolidated checkpoint for inference",
             "Write RUN's model (the EMA weights where the run keeps them), model.json, vocabulary and tokenizers\n"
             "as one safetensors checkpoint, without optimizer or training state; sharded (FSDP2) runs are\n"
             "consolidated. `unitok.checkpoint.load_model(OUT)` loads it on any machine.")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--out", required=True, help="new directory for the exported checkpoint")
    p = _add(ck, "convert", "unitok.checkpoint:convert_cli", "convert an old-layout text-LM checkpoint",
             "Convert a text-LM run written before unitok-checkpoint/1 (checkpoint/state.json +\n"
             "model.safetensors) into the current format (weights, config, vocabulary, tokenizer; not the\n"
             "optimizer). Tokenizer folders written by save_pretrained (OUT/final) load as they are.")
    p.add_argument("old", help="old run directory or checkpoint directory")
    p.add_argument("new", help="directory to write the converted run into")
    p = _add(ck, "import", "unitok.interop.hf:import_cli", "import a transformers model folder (Llama, Qwen2, Qwen3, Chameleon, Emu3, Janus)",
             "Read a transformers folder (config.json, model.safetensors or its sharded index, tokenizer.json; a\n"
             "pytorch_model.bin only through unitok's pickle reader, which executes nothing) and write a unitok\n"
             "run: the weights under our names, the tokenizer.json as its text tokenizer and a vocabulary of the\n"
             "model's own ids. `unitok lm sample`, `unitok generate --task text-to-text` and load_model read it.\n"
             "What maps to what, and what is refused: docs/interop.md.",
             epilog="example:\n  unitok checkpoint import ~/models/Qwen3-0.6B --out runs/qwen3")
    p.add_argument("src", help="transformers model folder")
    p.add_argument("--out", required=True, help="run directory to write (its checkpoint/ must not exist)")
    p.add_argument("--format", default="auto", choices=["auto", "llama", "qwen2", "qwen3", "chameleon", "emu3", "janus"],
                   help="model family (default: auto, config.json's model_type)")
    p.add_argument("--image-decoder", help="chameleon: the taming VQGAN checkpoint with the image decoder the "
                   "folder lacks (Meta's tokenizer/vqgan.ckpt)")
    p = _add(ck, "export-hf", "unitok.interop.hf:export_hf_cli", "write a run as a transformers checkpoint",
             "Write RUN's model as a folder that AutoModelForCausalLM.from_pretrained loads without custom code\n"
             "(Qwen3 layout when the model has QK-norm, Llama without), with the unitok vocabulary and\n"
             "tokenizers beside it (Pipeline.from_pretrained loads the folder too) and a README card. Models no\n"
             "stock transformers class computes are refused with the reason (docs/interop.md).")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--out", required=True, help="new directory for the transformers checkpoint")

    # --- generate (any-to-any, from a unified checkpoint)
    p = _add(sub, "generate", "unitok.generation.pipeline:run_cli",
             "generate text, images, audio or video from a checkpoint",
             "Run one task with a unified checkpoint and write the outputs to --out: PNG (images), WAV (audio),\n"
             "MP4 or GIF (video), TXT (text) and generation.json (ids, span shapes, settings, timings).\n"
             "Media spans have exactly the requested size (their header is written for the model) and always\n"
             "decode. Inputs are resized, cropped and resampled as pretokenization did.\n\n"
             "tasks:\n"
             "  text-to-text        continue the prompt\n"
             "  text-to-image       an image for the prompt (--size)\n"
             "  image-to-text       caption --image (the prompt, if any, starts the caption)\n"
             "  text-to-audio       speech for the prompt (--seconds)\n"
             "  audio-to-text       transcribe --audio\n"
             "  image-to-image      complete the lower half of --image from its upper half\n"
             "  video-continuation  continue the clip --video (--frames in all)",
             epilog="examples:\n"
                    "  unitok generate runs/u --task text-to-image --prompt 'a red square' --cfg 3 --out out/t2i\n"
                    "  unitok generate runs/u --task image-to-text --image cat.png --out out/caption\n"
                    "  unitok generate runs/u --task text-to-audio --prompt 'hello world' --seconds 2 --out out/tts")
    p.add_argument("run", help="run directory or checkpoint directory")
    p.add_argument("--task", required=True, metavar="TASK", help="one of the tasks above")
    p.add_argument("--head", choices=("discrete", "diffusion"), default="discrete",
                   help="output head of the media span (diffusion: text-to-image, a checkpoint trained with one)")
    p.add_argument("--steps", type=int, default=50, help="diffusion head: denoising steps (default 50)")
    p.add_argument("--sampler", choices=("ddpm", "ddim", "euler"), default=None,
                   help="diffusion head: sampler (default: ddim for epsilon heads, euler for flow heads)")
    p.add_argument("--prompt", default="", help="text prompt (default: none)")
    p.add_argument("--image", default=None, metavar="FILE", help="input image (image-to-text, image-to-image)")
    p.add_argument("--audio", default=None, metavar="FILE", help="input audio (audio-to-text)")
    p.add_argument("--video", default=None, metavar="FILE", help="input video (video-continuation)")
    p.add_argument("--seconds", type=float, default=None,
                   help="text-to-audio: duration (default: the model ends the span, within the training chunk length)")
    p.add_argument("--size", type=int, default=None,
                   help="image / video side in pixels, a multiple of the tokenizer's downsampling (default: the "
                        "training policy's)")
    p.add_argument("--frames", type=int, default=None,
                   help="video-continuation: frames in all, 1 + k x the tokenizer's temporal factor (default: the "
                        "input clip and as many again)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=1, help="samples, one batch (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg", type=float, default=1.0,
                   help="classifier-free guidance scale inside media spans (default: 1 = off)")
    p.add_argument("--temperature", type=float, default=None, help="override in every modality (0 = greedy)")
    p.add_argument("--top-k", type=int, default=None, help="override in every modality (0 = off)")
    p.add_argument("--top-p", type=float, default=None, help="override in every modality (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="override in every modality (1 = off)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="text output only (default: what the context holds; <eos> ends it)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")

    # --- unified pretraining
    p = _add(sub, "train", "unitok.training.unified:run_cli", "pretrain the unified model on token shards",
             "Train one transformer on packed documents of every modality (from `unitok pretokenize`), with the\n"
             "loss per modality on training batches and on a held-out split. Also under torchrun\n"
             "(run.parallel=ddp or fsdp2).", epilog=LM_EPILOG)
    _train_args(p, "run config YAML, e.g. configs/train/unified-debug.yaml", "token shard directory", "run directory")

    # --- pretokenize and shards
    p = _add(sub, "pretokenize", "unitok.data.pretokenize:run_cli", "interleaved documents -> token shards",
             "Tokenize JSONL manifests, webdataset .tar shards and folders of media (with .txt captions or a\n"
             "captions.tsv / transcripts.tsv) with the given tokenizers into memory-mapped token shards.\n"
             "Bad files are skipped and listed in stats.json, each reason naming its file; a run that keeps\n"
             "no document exits 2 with the count of each reason. --resume continues an interrupted run (on a\n"
             "complete output it changes nothing); the output is byte-identical for any --workers, and under\n"
             "torchrun (one process per GPU: each rank encodes a share of the documents, rank 0 writes them\n"
             "in order). Tars are read as a stream; a file over a limit is refused from its header, before\n"
             "decoding.",
             epilog="Policy: --set image_size=256 video_size=128 video_fps=8 video_frames=9 audio_max_seconds=10 "
                    "text_first_ratio=0.5 max_doc_tokens=4096 seed=0. Limits: max_video_frames=4096 (at video_fps) "
                    "max_video_pixels=500000000 (frames x width x height) max_recording_seconds=3600 "
                    "max_image_pixels=64000000 max_member_mb=256 (a tar member) max_tar_mb=16384 (a tar).")
    p.add_argument("data", nargs="+", help="JSONL manifests, .tar shards or folders")
    p.add_argument("--tokenizer", nargs="+", required=True, metavar="DIR", help="tokenizer directories (save_pretrained)")
    p.add_argument("--vocab", metavar="PATH", help="the vocabulary to write in (vocab.json, or a run: an imported "
                   "model's id layout); the tokenizers must build it (default: theirs)")
    p.add_argument("--out", required=True, help="shard directory")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: 0 = this process)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="accept JSONL media paths that are absolute or lead out of the manifest's folder")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="policy settings (see below)")
    shards = sub.add_parser("shards", help="inspect token shards").add_subparsers(dest="shards_command", metavar="COMMAND")
    shards.required = True
    p = _add(shards, "show", "unitok.data.shards:show_cli", "print the statistics of token shards")
    p.add_argument("shards", help="directory written by `unitok pretokenize`")
    p = _add(shards, "decode", "unitok.data.shards:decode_cli", "write a document back as text and media files")
    p.add_argument("shards", help="directory written by `unitok pretokenize`")
    p.add_argument("--doc", type=int, required=True, help="document index")
    p.add_argument("--out", required=True, help="folder for the files")

    # --- data sets made here
    data = sub.add_parser("data", help="make data sets").add_subparsers(dest="data_command", metavar="COMMAND")
    data.required = True
    p = _add(data, "scenes", "unitok.data.scenes:run_cli", "shapes, moving shapes and spoken captions with exact ground truth",
             "Images of 1-3 objects (4 shapes, 8 colours, 2 sizes, a 3x3 grid) on textured grey backgrounds with\n"
             "captions in 8 templates, clips of one moving object, and the captions spoken by eSpeak NG in many\n"
             "voices; split into train / seen / held_out, holding out colour-shape combinations, two templates\n"
             "and some voices. Folders that `unitok pretokenize` reads, and OUT/scenes.json with the ground\n"
             "truth of every item; `unitok bench judge` scores against it. docs/judges.md describes it.",
             epilog="example:\n  unitok data scenes --out data/scenes --n 2000 --seed 0")
    p.add_argument("--out", required=True, help="new (or empty) folder to write into")
    p.add_argument("--n", type=int, default=2000, help="images (default: 2000)")
    p.add_argument("--clips", type=int, default=None, help="clips of a moving object (default: n/4)")
    p.add_argument("--speech", type=int, default=None,
                   help="recordings, of the first images' captions (default: n/2; 0 = none)")
    p.add_argument("--px", type=int, default=64, help="image and frame side in pixels (default: 64)")
    p.add_argument("--frames", type=int, default=9, help="frames per clip (default: 9)")
    p.add_argument("--prompt-frames", type=int, default=5,
                   help="frames of a clip given as the prompt of video continuation (default: 5)")
    p.add_argument("--seed", type=int, default=0)
    p = _add(data, "split", "unitok.data.corpus:run_cli", "split a corpus (photos/ speech/ video/ text/) by source",
             "Write OUT/train/ and OUT/held-out/ folders of symlinks per modality, no source on both sides:\n"
             "video by original_file, speech by recording folder and language, photos and text per file\n"
             "(SOURCES.tsv says which); docs/unified.md describes it. Deterministic per seed.",
             epilog="example:\n  unitok data split ../shared/corpus --out runs/corpus-split --held-out-fraction 0.2")
    p.add_argument("corpus", help="folder with photos/, speech/, video/, text/ (e.g. ../shared/corpus)")
    p.add_argument("--out", required=True, help="new (or empty) folder to write into")
    p.add_argument("--held-out-fraction", type=float, default=0.2, help="fraction of sources held out (default: 0.2)")
    p.add_argument("--seed", type=int, default=0)

    # --- vocab
    vocab = sub.add_parser("vocab", help="the unified vocabulary").add_subparsers(dest="vocab_command", metavar="COMMAND")
    vocab.required = True
    p = _add(vocab, "show", "unitok.cli:show_vocab", "show a vocabulary manifest (ranges, tokenizers, hash)")
    p.add_argument("manifest", help="vocab.json written beside shards and checkpoints")
    p = _add(vocab, "build", "unitok.cli:build_vocab", "the unified vocabulary of a set of saved tokenizers",
             "Write the vocabulary manifest of any set of tokenizers saved with save_pretrained (at most one\n"
             "text tokenizer and one per media modality): text ids, special and size tokens, then one range\n"
             "per codebook level. Each tokenizer is identified by its config and a hash of its weights.")
    p.add_argument("--tokenizer", nargs="+", required=True, metavar="DIR", help="tokenizer directories")
    p.add_argument("--out", required=True, help="where to write vocab.json")
    p.add_argument("--max-size", type=int, default=1024, help="number of size tokens <size:1..N> (default: 1024)")
    return parser


def show_vocab(args) -> int:
    from unitok.vocab import UnifiedVocab

    v = UnifiedVocab.load(args.manifest)
    print(v)
    for name, (a, b) in v.manifest()["ranges"].items():
        print(f"  {name:10s} [{a}, {b})  {b - a} ids")
    for m, fmt in v.spans.items():
        print(f"  {m} span: {fmt.describe()}")
    print(f"  token shards {v.id_dtype}, hash {v.hash}")
    return 0


def build_vocab(args) -> int:
    from unitok.errors import ConfigError
    from unitok.tokenizers.base import load_tokenizer
    from unitok.vocab import UnifiedVocab

    toks = [load_tokenizer(d) for d in args.tokenizer]
    by = {}
    for d, t in zip(args.tokenizer, toks):
        if t.modality in by:
            raise ConfigError(f"two {t.modality} tokenizers ({by[t.modality]} and {d}); one per modality")
        by[t.modality] = d
    try:
        v = UnifiedVocab.from_tokenizers(toks, max_size=args.max_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    v.save(args.out)
    print(f"{v} -> {args.out} (token shards store its ids as {v.id_dtype})")
    return 0


def _version() -> str:
    from unitok import __version__

    return __version__


def _end_distributed() -> None:
    """Under torchrun, every rank waits for the others, then tears the process group down. A rank that
    exits with the group alive while another still finishes its run (writes the checkpoint, tears down
    later) can abort in gloo ("terminate called without an active exception", SIGABRT): seen once in
    test_engine's two-rank run under load, reproduced by tests/test_distributed_exit.py."""
    dist = sys.modules.get("torch.distributed")  # a command that never imported torch has no group
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after the options too
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    module, func = args.handler.split(":")
    try:
        handler = getattr(importlib.import_module(module), func)
        rc = int(handler(args) or 0)
        _end_distributed()
        return rc
    except UnitokError as e:
        print(f"unitok: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unitok: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
