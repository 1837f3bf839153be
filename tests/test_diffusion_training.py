"""The diffusion head in the unified trainer (issue 24, part 5): heads per modality, the loss from the
batch's latents, the checkpoint's record of its heads, load_model refusing a head it lacks, and
freeze_backbone leaving the backbone bit-identical."""

import json

import pytest
import torch

from test_pretokenize import CFG, corpus  # noqa: F401  (fixture)
from test_unified import DEBUG, shards  # noqa: F401  (fixture)
from unitok.config import load_config
from unitok.data.shards import read_shards
from unitok.training.unified import UnifiedConfig, train_unified


def _train(shards, out, *overrides):  # noqa: F811
    cfg = load_config(UnifiedConfig, DEBUG, ["run.threads=1", "diffusion.width=32", "diffusion.depth=1",
                                             *overrides])
    return train_unified(cfg, shards, out, progress=False)


def test_both_heads_train_and_the_checkpoint_records_them(shards, tmp_path):  # noqa: F811
    from unitok.checkpoint import load_model
    from unitok.errors import CheckpointError

    task, _ = _train(shards, tmp_path / "run", "heads.image=both")
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "diffusion_image" in r]
    assert len(steps) == 10 and all(r["diffusion_image"] > 0 for r in steps) and "loss_image" in steps[0]
    evals = [r["eval_diffusion_image"] for r in recs if "eval_diffusion_image" in r]
    assert len(evals) >= 2 and all(e > 0 for e in evals)  # the held-out diffusion loss, at each evaluation
    assert task.evaluate()["eval_diffusion_image"] == pytest.approx(evals[-1])  # fixed draws: a repeatable figure
    card = (tmp_path / "run" / "checkpoint" / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("- output heads: "))
    assert "image both (held-out diffusion loss " in line and "audio discrete" in line
    meta = json.loads((tmp_path / "run" / "checkpoint" / "model.json").read_text())
    head = meta["config"]["heads"]["image"]
    tok = task.latent_tokenizers["image"]
    assert head["kind"] == "diffusion" and head["latent_dim"] == tok.config.embed_dim and head["width"] == 32
    m = load_model(tmp_path / "run", heads={"image": "diffusion"})
    assert set(m.model.diffusion) == {"image"}
    assert torch.equal(m.model.diffusion["image"].denoiser.out.weight, task.model.diffusion["image"].denoiser.out.weight)
    load_model(tmp_path / "run", heads={"image": "discrete"})  # "both": either head
    with pytest.raises(CheckpointError, match="no diffusion head for audio .the checkpoint has a discrete head"):
        load_model(tmp_path / "run", heads={"audio": "diffusion"})


def test_diffusion_only_drops_the_codes_next_token_loss(shards, tmp_path):  # noqa: F811
    """heads.image=diffusion: the next-token loss leaves out image-code targets (the codes stay inputs)."""
    from unitok.training.loop import Engine
    from unitok.training.unified import UnifiedTask

    cfg = load_config(UnifiedConfig, DEBUG, ["run.threads=1", "heads.image=diffusion", "diffusion_weight=0"])
    task = UnifiedTask(cfg, Engine(cfg.run, cfg.optim, tmp_path / "run", recipe={}), read_shards(shards))
    b = task.data.next()
    lo, hi = task.shards.vocab.code_range("image")
    assert ((b.targets >= lo) & (b.targets < hi)).any()
    with torch.no_grad():
        loss, parts = task._losses(b, task.model, latents=task.latent_targets(b.targets))
        nll = task.model(b.ids, b.targets, doc_ids=b.doc_ids, reduction="none").view(-1)
    t = b.targets.view(-1)
    keep = (t != -100) & ~((t >= lo) & (t < hi))
    assert float(loss) == pytest.approx(float(nll[keep].mean()), rel=1e-5)
    assert parts["diffusion"]["image"] > 0  # computed (weight 0 here), one latent token per image code
    rows, cols, z0, _ = task.latent_targets(b.targets)["image"]
    assert len(rows) == int(((b.targets >= lo) & (b.targets < hi)).sum()) and z0.shape[1] == 16


def test_freeze_backbone_leaves_every_backbone_tensor_bit_identical(shards, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    _train(shards, tmp_path / "base")
    _train(shards, tmp_path / "head", f"init_from={tmp_path / 'base'}", "heads.image=diffusion", "freeze_backbone=true")
    a, b = (load_file(str(tmp_path / r / "checkpoint" / "model.safetensors")) for r in ("base", "head"))
    backbone = [k for k in b if not k.startswith("diffusion.")]
    assert sorted(backbone) == sorted(a) and all(torch.equal(a[k], b[k]) for k in a)
    assert b["diffusion.image.denoiser.out.weight"].abs().sum() > 0  # the head learned (it starts at zero)


def test_head_recipe_errors_are_one_line(shards, tmp_path):  # noqa: F811
    from unitok.errors import ConfigError

    for bad, match in [(["heads.text=diffusion"], "heads: text: 'diffusion'; use a media modality"),
                       (["heads.image=continuous"], "heads: image: 'continuous'"),
                       (["heads.image=both", "diffusion.projector=resampler"], "the resampler needs whole spans"),
                       (["heads.image=both", "diffusion.latent_dim=4"], "come from the tokenizer"),
                       (["heads.image=diffusion", "freeze_backbone=true"], "set init_from"),
                       (["heads.image=diffusion", "bidirectional_images=true", "loss_weights.image=0"],
                        "keep heads.image discrete")]:
        with pytest.raises(ConfigError, match=match):
            load_config(UnifiedConfig, DEBUG, bad)
    with pytest.raises(ConfigError, match="no video tokenizer"):
        _train(shards, tmp_path / "v", "heads.video=both")


def test_kill_resume_and_two_ranks_with_a_diffusion_head(shards, tmp_path):  # noqa: F811
    """kill -9 + resume gives the same weights and losses; DDP on 2 ranks matches one process (the
    head's noise, timesteps and dropout are drawn per global token, not per rank)."""
    from safetensors.torch import load_file

    from test_engine import _losses
    from test_unified import _cli

    args = ("train", DEBUG, "heads.image=both", "diffusion.width=32", "diffusion.depth=1", "--data", shards)
    full, cut = tmp_path / "full", tmp_path / "cut"
    r = _cli(*args, out=full)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(*args, out=cut, env={"UNITOK_KILL_AFTER_CHECKPOINT": "5"})
    assert r.returncode == -9
    r = _cli(*args, "--resume", out=cut)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (load_file(str(p / "checkpoint" / "model.safetensors")) for p in (full, cut))
    assert any(k.startswith("diffusion.image.") for k in a) and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(full) == _losses(cut)
    diff = lambda run: [json.loads(x)["diffusion_image"] for x in (run / "metrics.jsonl").read_text().splitlines()
                        if "diffusion_image" in x]
    assert diff(full) == diff(cut)
    r = _cli(*args[:-2], "run.parallel=ddp", "--data", shards, out=tmp_path / "ddp", torchrun=2)
    assert r.returncode == 0, [x for x in r.stderr.splitlines() if "Error" in x][:8]
    la, lb = _losses(full), _losses(tmp_path / "ddp")
    rel = max(abs(la[k] - lb[k]) / abs(la[k]) for k in la)
    print(f"diffusion head ddp: max relative loss difference 1 vs 2 ranks {rel:.2e}")
    assert rel < 1e-4, rel  # the unified trainer's tolerance (test_unified)


def test_diffusion_config_loads():
    from test_engine import ROOT

    cfg = load_config(UnifiedConfig, ROOT / "configs" / "train" / "unified-diffusion-debug.yaml")
    assert cfg.heads == {"image": "both"} and cfg.diffusion["width"] == 64 and cfg.model.dim == 32


def test_a_span_generated_by_the_diffusion_head_feeds_its_codes_back(shards, tmp_path):  # noqa: F811
    """diffusion_span: reproducible with a seed; the codes fed back are the sampled latents' codes;
    the latent decodes to an image of the grid's size; guidance with an unconditional stream runs."""
    from unitok.generation.diffusion import diffusion_span
    from unitok.model.diffusion_head import latent_codes, latent_tokens

    task, _ = _train(shards, tmp_path / "run", "heads.image=both", "run.max_steps=2")
    model, vocab, tok = task.model.eval(), task.shards.vocab, task.latent_tokenizers["image"]
    grid = (2, 3)
    prompt = [vocab.bos, *vocab.span_head("image", grid)]
    a = diffusion_span(model, tok, vocab, "image", prompt, grid, steps=3, seed=1)
    b = diffusion_span(model, tok, vocab, "image", prompt, grid, steps=3, seed=1)
    c = diffusion_span(model, tok, vocab, "image", prompt, grid, steps=3, seed=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    z, codes = a
    assert z.shape == (1, tok.config.embed_dim, *grid) and codes.shape == (6, 1)
    assert torch.equal(codes, latent_codes(tok, latent_tokens(z)[0]))
    assert torch.equal(tok.quantize_latents(z).reshape(-1), codes[:, 0])  # as encode would code it
    assert tok.decode_latents(z).shape == (1, 3, 2 * tok.downsample, 3 * tok.downsample)
    g = diffusion_span(model, tok, vocab, "image", prompt, grid, steps=3, seed=1, cfg_scale=2.0, uncond_prompt=[vocab.bos])
    assert g[0].shape == z.shape and not torch.equal(g[0], z)


def test_pipeline_text_to_image_with_the_diffusion_head(shards, tmp_path):  # noqa: F811
    import numpy as np

    from unitok.errors import CheckpointError, ConfigError
    from unitok.generation import Pipeline

    _train(shards, tmp_path / "run", "heads.image=both", "run.max_steps=2")
    pipe = Pipeline.from_pretrained(tmp_path / "run")
    px = 2 * pipe.tokenizers["image"].downsample
    kw = dict(prompt="a", size=px, head="diffusion", steps=3, seed=4)
    a = pipe("text-to-image", **kw, out=tmp_path / "out")
    b = pipe("text-to-image", **kw)
    assert a.samples[0].media.shape == (px, px, 3) and np.array_equal(a.samples[0].media, b.samples[0].media)
    assert a.samples[0].span["codes_shape"] == [2, 2] and a.samples[0].ids[-1] == pipe.vocab.marker_ids["image"][1]
    assert (tmp_path / "out" / "sample0.png").is_file() and a.settings["head"] == "diffusion"
    torch.manual_seed(0)  # a head two steps old still predicts ~0 whatever its condition: give it some
    for p in pipe.model.diffusion["image"].denoiser.parameters():
        torch.nn.init.normal_(p, std=0.1)
    a, g = (pipe("text-to-image", **kw, cfg=c) for c in (1.0, 2.0))  # guidance against the unconditional stream
    assert not np.array_equal(g.samples[0].media, a.samples[0].media)
    with pytest.raises(ConfigError, match="text-to-image spans only"):
        pipe("text-to-audio", prompt="a", seconds=0.1, head="diffusion")
    with pytest.raises(ConfigError, match="sampler 'euler' does not sample"):
        pipe("text-to-image", **{**kw, "steps": 1}, sampler="euler")
    _train(shards, tmp_path / "plain", "run.max_steps=1")
    with pytest.raises(CheckpointError, match="no diffusion head for image"):
        Pipeline.from_pretrained(tmp_path / "plain")("text-to-image", **kw)
    # the CLI: --head, --steps, --sampler reach the pipeline; a head the checkpoint lacks is one line
    import subprocess
    import sys

    from test_engine import ENV, ROOT

    def cli(run, out):
        return subprocess.run([sys.executable, "-m", "unitok.cli", "generate", str(run), "--task", "text-to-image",
                               "--prompt", "a", "--size", str(px), "--head", "diffusion", "--steps", "2",
                               "--sampler", "ddpm", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env=ENV)
    r = cli(tmp_path / "run", tmp_path / "cli")
    assert r.returncode == 0, r.stderr[-2000:]
    js = json.loads((tmp_path / "cli" / "generation.json").read_text())
    assert (js["settings"]["head"], js["settings"]["steps"], js["settings"]["sampler"]) == ("diffusion", 2, "ddpm")
    r = cli(tmp_path / "plain", tmp_path / "cli2")
    assert r.returncode == 2 and "no diffusion head for image" in r.stderr and r.stderr.count("\n") == 1
