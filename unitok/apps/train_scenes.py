"""The scenes recipe: data, tokenizers and a unified model trained on 2 CPU cores, then judged.

    .venv/bin/python scripts/train_scenes.py [--config configs/train/scenes-cpu.yaml] [--out runs/scenes] \
        [--quick] [key=value ...]

Stages, each skipped when its output is already there (so an interrupted run goes on where it stopped):
1. data: `unitok data scenes` into OUT/data (the config's `scenes`);
2. text tokenizer: SentencePiece on the training split's captions (OUT/tokenizers/text);
3. image, video and audio tokenizers on the training split's images, clips and recordings, each a
   recipe of tokenizers/ with the config's settings over it (OUT/tokenizers/<modality>; audio only
   when the data has speech);
4. shards: `unitok pretokenize` of the training split with the config's media `policy` (OUT/shards);
5. the unified model: `unitok train` with the config's `unified` (OUT/run; resumed when interrupted);
6. judge: `unitok bench judge OUT/run --data OUT/data` on the seen and held-out splits
   (OUT/judge.json, the grid OUT/judge/text_to_image.png).
OUT/recipe.json records the settings used and each stage's seconds. --quick applies the config's
`quick` block (tiny settings: the whole recipe well under a minute); key=value overrides come last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEDIA_DIRS = {"image": "images", "video": "video", "audio": "speech"}  # tokenizer -> its folder in each split


def settings(config, quick: bool, overrides: list[str]) -> dict:
    """The config file with its `quick` block (when asked) and the overrides over it."""
    from unitok.config import apply_overrides, merge, read_yaml

    data = read_yaml(config)
    fast = data.pop("quick", {})
    return apply_overrides(merge(data, fast) if quick else data, overrides)


def tokenizer_recipe(spec: dict, modality: str) -> dict:
    """A tokenizer recipe of tokenizers/ with the scenes settings over it."""
    from unitok.config import merge, read_yaml
    from unitok.errors import ConfigError

    if not isinstance(spec, dict) or "recipe" not in spec:
        raise ConfigError(f"tokenizers.{modality} needs a 'recipe' (a file of tokenizers/) and may have 'set'")
    recipe = merge(read_yaml(ROOT / spec["recipe"]), spec.get("set") or {})
    if recipe.get("modality") != modality:
        raise ConfigError(f"tokenizers.{modality}: {spec['recipe']} is a recipe for {recipe.get('modality')}")
    return recipe


def train_tokenizer(modality: str, recipe, data_dir: Path, out: Path) -> Path:
    """Train (or resume an interrupted training of) a tokenizer into OUT; returns OUT/final."""
    from unitok.checkpoint import CKPT_DIR

    if modality == "audio":
        from unitok.training.encodec import train
    else:
        from unitok.training.vqgan import train
    train(recipe, data_dir, out, resume=(out / CKPT_DIR).exists())
    return out / "final"


def check(cfg: dict) -> tuple:
    """The settings as the stages take them: (ScenesConfig, PretokenizeConfig, {modality: tokenizer
    recipe (its trainer's config)}, UnifiedConfig, judge settings); a one-line error for any bad key."""
    from unitok.config import from_dict
    from unitok.data.pretokenize import PretokenizeConfig
    from unitok.data.scenes import ScenesConfig
    from unitok.errors import ConfigError
    from unitok.training.encodec import EncodecRecipe
    from unitok.training.unified import UnifiedConfig
    from unitok.training.vqgan import TrainConfig

    unknown = set(cfg) - {"scenes", "text_vocab", "policy", "tokenizers", "unified", "judge"}
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}")
    recipes = {}
    for m, spec in (cfg.get("tokenizers") or {}).items():
        if m not in MEDIA_DIRS:
            raise ConfigError(f"tokenizers.{m}: use {', '.join(MEDIA_DIRS)}")
        recipes[m] = from_dict(EncodecRecipe if m == "audio" else TrainConfig, tokenizer_recipe(spec, m),
                               source=f"tokenizers.{m}")
    judge = {"max_items": None, "seed": 0, "cfg": 1.0, **(cfg.get("judge") or {})}
    if set(judge) - {"max_items", "seed", "cfg"}:
        raise ConfigError(f"judge: unknown setting {sorted(set(judge) - {'max_items', 'seed', 'cfg'})[0]!r}")
    return (from_dict(ScenesConfig, cfg.get("scenes") or {}, source="scenes"),
            from_dict(PretokenizeConfig, cfg.get("policy") or {}, source="policy"), recipes,
            from_dict(UnifiedConfig, cfg.get("unified") or {}, source="unified"), judge)


def recipe(cfg: dict, out: Path) -> dict:
    """Run the stages (module docstring); returns OUT/recipe.json's record."""
    from unitok.apps.bench_judge import judge_run, summary_table
    from unitok.checkpoint import CKPT_DIR
    from unitok.data.pretokenize import pretokenize
    from unitok.data.scenes import load_scenes, write_scenes
    from unitok.data.text import train_text_tokenizer
    from unitok.reporting import write_json
    from unitok.training.unified import train_unified

    scenes_cfg, policy, recipes, unified, judge = check(cfg)  # every block before the first stage starts
    done = out / "recipe.json"  # an earlier invocation's stage times are kept beside this one's
    seconds: dict = json.loads(done.read_text()).get("seconds", {}) if done.is_file() else {}
    record = {"settings": cfg, "seconds": seconds}
    data_dir, toks = out / "data", out / "tokenizers"

    def stage(name: str, done: bool, fn):
        if done:
            print(f"train_scenes: {name}: already there, skipped", flush=True)
            return
        print(f"train_scenes: {name} ...", flush=True)
        t0 = time.perf_counter()
        fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"train_scenes: {name} took {seconds[name]:.0f} s", flush=True)
        write_json(record, out / "recipe.json")

    out.mkdir(parents=True, exist_ok=True)
    stage("data", (data_dir / "scenes.json").is_file(), lambda: write_scenes(data_dir, scenes_cfg))
    data = load_scenes(data_dir)
    train = data_dir / "train"
    captions = sorted({it["caption"] for it in data["items"] if it["split"] == "train"})
    stage("text tokenizer", (toks / "text" / "spm.model").is_file(),
          lambda: train_text_tokenizer("\n".join(captions), int(cfg.get("text_vocab", 384)), toks / "text")
          .save_pretrained(toks / "text"))
    dirs = [toks / "text"]
    for m, r in recipes.items():
        if not (train / MEDIA_DIRS[m]).is_dir():
            print(f"train_scenes: no {MEDIA_DIRS[m]} in the data ({data.get('speech_error') or 'none written'}); "
                  f"no {m} tokenizer", flush=True)
            continue
        stage(f"{m} tokenizer", (toks / m / "final").is_dir(),
              lambda m=m, r=r: train_tokenizer(m, r, train / MEDIA_DIRS[m], toks / m))
        dirs.append(toks / m / "final")
    inputs = [train / d for d in MEDIA_DIRS.values() if (train / d).is_dir()]
    stage("shards", (out / "shards" / "stats.json").is_file() and not (out / "shards" / "progress.json").is_file(),
          lambda: pretokenize(inputs, dirs, out / "shards", policy, resume=(out / "shards").is_dir(), progress=False))
    stage("unified model", (out / "run" / "summary.json").is_file(),
          lambda: train_unified(unified, out / "shards", out / "run", resume=(out / "run" / CKPT_DIR).exists()))

    def judged():
        report = judge_run(out / "run", data_dir, data, judge["max_items"], out=out / "judge", seed=judge["seed"],
                           cfg=judge["cfg"])
        write_json(report, out / "judge.json")
        print(summary_table(report), end="")

    stage("judge", False, judged)
    print(f"train_scenes: -> {out / 'judge.json'}, {out / 'judge' / 'text_to_image.png'}, {out / 'recipe.json'}")
    return record


def main(argv=None) -> int:
    from unitok.errors import UnitokError

    ap = argparse.ArgumentParser(prog="train_scenes", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--config", default=str(ROOT / "configs" / "train" / "scenes-cpu.yaml"))
    ap.add_argument("--out", default="runs/scenes")
    ap.add_argument("--quick", action="store_true", help="the config's tiny `quick` settings (tests)")
    ap.add_argument("overrides", nargs="*", help="key=value over the config (e.g. unified.run.max_minutes=10)")
    a = ap.parse_args(argv)
    try:
        recipe(settings(a.config, a.quick, a.overrides), Path(a.out))
    except UnitokError as e:
        print(f"train_scenes: error: {e}", file=sys.stderr)
        return 2
    return 0
