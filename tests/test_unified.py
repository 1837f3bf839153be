"""Unified pretraining: packed batches never cross a document (checked on the model), condition
dropout, the trainer with per-modality losses, kill -9 + resume, DDP and FSDP2 against one process."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from test_engine import ENV, ROOT, _free_port, _losses
from test_pretokenize import CFG, corpus  # noqa: F401  (fixture)
from unitok.data.packed import PackedBatches, drop_conditions, split_documents, split_shards
from unitok.data.pretokenize import PretokenizeConfig, pretokenize
from unitok.data.shards import document_kinds, document_sources, read_shards, unigram_cross_entropy, unigram_entropy
from unitok.vocab import Modality

DEBUG = ROOT / "configs" / "train" / "unified-debug.yaml"


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("shards") / "s"
    pretokenize([corpus / "docs.jsonl", corpus / "shard-000.tar", corpus / "folder"],
                [corpus / "tok_text", corpus / "tok_image", corpus / "tok_audio"], out, CFG, progress=False)
    return out


def test_packed_rows_keep_documents_apart_on_the_model(shards):
    from unitok.model.config import debug
    from unitok.model.transformer import UnifiedTransformer

    sh = read_shards(shards)
    data = PackedBatches(sh, seq_len=256, batch_size=4, seed=0, eval_fraction=0.0)
    b = data.next()
    # the first document's last target and the second's first token: no loss across the boundary
    cut = (b.doc_ids[:, 1:] != b.doc_ids[:, :-1]).nonzero()
    assert len(cut) > 0
    for r, t in cut.tolist():
        assert b.targets[r, t] == -100
    torch.manual_seed(0)
    cfg = debug()
    cfg.vocab_size, cfg.max_seq_len = sh.vocab.size, 256
    model = UnifiedTransformer(cfg).eval()
    with torch.no_grad():
        packed = model(b.ids, b.targets, doc_ids=b.doc_ids, reduction="none").view(b.ids.shape)
        for r in range(b.ids.shape[0]):  # each piece alone, as its own sequence, gives the same losses
            for d in b.doc_ids[r].unique():
                m = b.doc_ids[r] == d
                alone = model(b.ids[r][m][None], b.targets[r][m][None], reduction="none").view(-1)
                assert torch.allclose(packed[r][m], alone, atol=1e-5), (r, int(d))


def test_split_is_seeded_and_stratified_by_document_kind():
    kinds = np.array([0] * 200 + [1] * 5 + [3] * 2 + [2])
    tr, ev = split_documents(len(kinds), 0.05, seed=3, kinds=kinds)
    assert sorted(np.concatenate([tr, ev]).tolist()) == list(range(len(kinds)))
    for k in (0, 1, 3):  # each kind with two or more documents: some held out, some trained on
        assert (kinds[ev] == k).any() and (kinds[tr] == k).any(), k
    assert not (kinds[ev] == 2).any()  # a lone document trains
    assert 5 <= (kinds[ev] == 0).sum() <= 20  # the fraction holds where documents are many
    again = split_documents(len(kinds), 0.05, seed=3, kinds=kinds)
    assert ev.tolist() == again[1].tolist() and ev.tolist() != split_documents(len(kinds), 0.05, 4, kinds)[1].tolist()
    assert split_documents(10, 0.99, 0)[0].size == 1  # never everything held out


MEDIA_CFG = PretokenizeConfig(audio_max_seconds=0.25, video_size=16, video_fps=8, video_frames=5, seed=3)


@pytest.fixture(scope="module")
def media(corpus, tmp_path_factory):  # noqa: F811
    """Shards of two long recordings (4 chunks each), two videos (4 clips each) and a manifest of 16
    text passages of one file; tiny tokenizers."""
    import av
    import soundfile as sf

    from unitok.tokenizers.video import VideoTokenizer, video_preset

    d = tmp_path_factory.mktemp("media")
    torch.manual_seed(0)
    vid = VideoTokenizer(video_preset("debug")).eval()
    vid.encode(torch.rand(2, 3, 5, 16, 16) * 2 - 1)  # k-means-initialise the codebook, as training would
    vid.save_pretrained(d / "tok_video")
    rng = np.random.default_rng(0)
    (d / "in").mkdir()
    for i, f0 in enumerate((220, 330)):
        t = np.arange(16000) / 16000  # 1 s: 4 chunks of 0.25 s
        sf.write(d / "in" / f"rec{i}.wav", 0.3 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(16000), 16000)
        with av.open(str(d / "in" / f"vid{i}.mp4"), "w") as c:  # 20 frames at 8 fps: 4 clips of 5
            s = c.add_stream("libx264", rate=8)
            s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
            for k in range(20):
                frame = np.full((32, 32, 3), 10 * k + 60 * i, np.uint8)
                for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    (d / "text.jsonl").write_text("".join(json.dumps({"segments": [{"text": f"passage {i} of the book"}]}) + "\n"
                                          for i in range(16)))
    out = d / "shards"
    pretokenize([d / "text.jsonl", d / "in"], [corpus / "tok_text", corpus / "tok_audio", d / "tok_video"], out,
                MEDIA_CFG, progress=False)
    return out


def _sides(sh, train, held) -> dict:
    """source -> the sides ("train", "eval") its documents are on."""
    side = {int(i): "train" for i in train} | {int(i): "eval" for i in held}
    out: dict = {}
    for i, s in enumerate(document_sources(sh)):
        out.setdefault(s["source"], set()).add(side[i])
    return out


def test_held_out_split_keeps_every_source_on_one_side(media):
    sh = read_shards(media)
    src, kinds = document_sources(sh), document_kinds(sh)
    chunks = [s for s in src if "chunk" in s]
    assert len(src) == len(sh) == 16 + 2 * 4 + 2 * 4 and len(chunks) == 16  # every chunk and clip records its index
    assert sorted(s["chunk"] for s in chunks if s["source"].endswith("rec0.wav")) == [0, 1, 2, 3]
    assert src[0]["source"].endswith("text.jsonl:1") and "chunk" not in src[0]
    for seed in range(6):
        train, held, report = split_shards(sh, 0.3, seed)
        assert sorted(np.r_[train, held].tolist()) == list(range(len(sh)))
        sides = _sides(sh, train, held)
        assert all(len(v) == 1 for v in sides.values()), (seed, sides)  # no source on both sides
        for k in (Modality.AUDIO, Modality.VIDEO):  # two sources: one held out, one trained on
            assert (kinds[held] == k).sum() == 4 and (kinds[train] == k).sum() == 4, (seed, k)
        assert report["audio"] == "1 of 2 sources held out (4 of 8 documents)"
        assert sorted(kinds[held[:3]]) == [Modality.TEXT, Modality.VIDEO, Modality.AUDIO]  # evaluated kinds first
        text_held = held[kinds[held] == Modality.TEXT]  # the 16 passages come first: blocks 0-3, 4-7, ...
        blocks = np.unique(text_held // 4)
        assert 0 < len(blocks) < 4 and all((text_held // 4 == b).sum() == 4 for b in blocks), (seed, text_held)
    # the split per document (no groups) puts chunks of one recording on both sides
    assert any(any(len(v) > 1 for v in _sides(sh, *split_documents(len(sh), 0.3, seed, kinds)).values())
               for seed in range(6))


def test_a_kind_with_one_source_is_reported_not_held_out(media, corpus, tmp_path):  # noqa: F811
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rec.wav").write_bytes((media.parent / "in" / "rec0.wav").read_bytes())
    pretokenize([media.parent / "text.jsonl", tmp_path / "in"], [corpus / "tok_text", corpus / "tok_audio"],
                tmp_path / "s", MEDIA_CFG, progress=False)
    sh = read_shards(tmp_path / "s")
    train, held, report = split_shards(sh, 0.5, 0)
    assert report["audio"] == "not held out: one source (4 documents)"
    assert not (document_kinds(sh)[held] == Modality.AUDIO).any() and len(held)  # the text is still held out
    assert split_documents(4, 0.5, 0, kinds=[3] * 4, groups=[7] * 4)[1].size == 0


def test_old_shards_without_sources_load_with_a_warning(media, tmp_path, capsys):
    import shutil

    shutil.copytree(media, tmp_path / "old")
    (tmp_path / "old" / "sources.jsonl").unlink()
    sh = read_shards(tmp_path / "old")
    err = capsys.readouterr().err
    assert "warning" in err and "sources.jsonl" in err and err.count("\n") == 1
    assert document_sources(sh) is None
    data = PackedBatches(sh, 64, 2, seed=0, eval_fraction=0.3)  # split per document, as before sources existed
    assert "of 8 documents held out" in data.split_report["audio"] and "of 4 blocks" in data.split_report["text"]
    assert data.next().ids.shape == (2, 64)


def test_eval_batches_score_every_held_out_target_once(media):
    sh = read_shards(media)
    data = PackedBatches(sh, seq_len=48, batch_size=3, seed=1, eval_fraction=0.3, cond_dropout=0.5)
    batches = data.eval_batches(1000)
    got = torch.cat([b.targets[b.targets != -100] for b in batches]).tolist()
    mods = torch.cat([b.modality[b.targets != -100] for b in batches]).tolist()
    docs = [np.asarray(sh.document(int(i))[0], np.int64) for i in data.eval_docs]
    assert got == np.concatenate([d[1:] for d in docs]).tolist()  # in order, each once, no condition dropout
    assert mods == np.concatenate([np.asarray(sh.document(int(i))[1])[1:] for i in data.eval_docs]).tolist()
    assert any(len(d) > 49 for d in docs) and len(batches[-1].ids) <= 3  # documents cross rows; no wrap-around
    first = data.eval_batches(2)
    assert len(first) == 2 and all(torch.equal(a.targets, b.targets) for a, b in zip(first, batches))


def test_evaluate_has_no_z_loss_and_matches_each_document_alone(media, tmp_path):
    from unitok.config import load_config
    from unitok.training.loop import Engine
    from unitok.training.unified import UnifiedConfig, UnifiedTask

    cfg = load_config(UnifiedConfig, DEBUG, ["run.threads=1", "model.z_loss=0.5", "eval_fraction=0.3",
                                             "seq_len=2048", "model.max_seq_len=2048"])
    task = UnifiedTask(cfg, Engine(cfg.run, cfg.optim, tmp_path / "run", recipe={}), read_shards(media))
    ev = task.evaluate()
    model, sh = task.model.eval(), task.shards
    assert sum(len(sh.document(int(i))[0]) for i in task.data.eval_docs) <= 2049  # one row: no document is cut
    sums, counts, with_z = np.zeros(4), np.zeros(4), 0.0
    with torch.no_grad():
        for i in task.data.eval_docs:  # each held-out document alone, as one sequence
            ids, mod = (torch.as_tensor(np.asarray(a, np.int64)) for a in sh.document(int(i)))
            nll = model(ids[None, :-1], ids[None, 1:], reduction="none", z_loss=0.0).view(-1)
            with_z += float(model(ids[None, :-1], ids[None, 1:], reduction="sum"))
            np.add.at(sums, mod[1:].numpy(), nll.numpy())
            np.add.at(counts, mod[1:].numpy(), 1)
    assert counts[Modality.AUDIO] > 500 and counts[Modality.VIDEO] > 100
    for m in np.flatnonzero(counts):  # the packed pieces score as the documents alone
        assert ev[f"eval_loss_{Modality(m).name.lower()}"] == pytest.approx(sums[m] / counts[m], rel=1e-4), m
    assert ev["eval_loss"] == pytest.approx(sums.sum() / counts.sum(), rel=1e-4)
    assert with_z / counts.sum() > ev["eval_loss"] + 0.1  # the z-loss the training loss carries is left out


def test_fair_baseline_against_a_hand_computation(shards):
    sh = read_shards(shards)
    v = sh.vocab
    train, held = np.arange(0, len(sh), 2), np.arange(1, len(sh), 2)
    docs = [np.asarray(sh.document(int(i))[0], np.int64) for i in held]
    mods = [np.asarray(sh.document(int(i))[1], np.int64) for i in held]
    targets = np.concatenate([np.r_[-100, d[1:]] for d in docs])  # a document's first token is never a target
    got = unigram_cross_entropy(sh, train, targets, np.concatenate(mods))
    counts: dict = {}
    for i in train:
        ids, mod = sh.document(int(i))
        for t, m in zip(np.asarray(ids)[1:].tolist(), np.asarray(mod)[1:].tolist()):
            counts[m, t] = counts.get((m, t), 0) + 1

    def level(t):  # the ids a model that knows the layout predicts t among
        name = v.token_name(t)
        if ":L" in name:
            m, lvl = name.split(":")[:2]
            return set(range(*v.code_range(m, int(lvl[1:]))))
        codes = {c for (m, lvl) in v.code_start for c in range(*v.code_range(m, lvl))}
        return set(range(v.size)) - codes

    for m in {int(x) for x in np.concatenate([x[1:] for x in mods])}:
        xs = [t for d, mo in zip(docs, mods) for t, tm in zip(d[1:].tolist(), mo[1:].tolist()) if tm == m]
        n = sum(c for (mm, _), c in counts.items() if mm == m)
        flat = -np.mean([np.log((counts.get((m, t), 0) + 1) / (n + v.size)) for t in xs])
        lv = []
        for t in xs:
            g = level(t)
            ng = sum(c for (mm, tt), c in counts.items() if mm == m and tt in g)
            lv.append(-np.log((counts.get((m, t), 0) + 1) / (ng + len(g))))
        name = Modality(m).name.lower()
        assert got[name][0] == len(xs) and got[name][1] == pytest.approx(flat) and got[name][2] == pytest.approx(
            np.mean(lv)), name
        assert got[name][2] < got[name][1]  # the level's ids share the smoothing: never above the other
    assert got["audio"][2] < got["audio"][1]  # knowing the level of the next code lowers the baseline


def test_document_kinds_and_unigram_entropy(shards):
    sh = read_shards(shards)
    kinds = document_kinds(sh, chunk=2)  # several chunks
    for i in range(len(sh)):
        mod = np.asarray(sh.document(i)[1])
        media = np.bincount(mod, minlength=4)[1:]
        assert kinds[i] == (media.argmax() + 1 if media.any() else 0)
    assert {1, 3} <= set(kinds.tolist())  # image and audio documents (this corpus has no text-only one)
    ent = unigram_entropy(sh)
    for m, (n, h, h_level) in ent.items():
        ids = np.concatenate([np.asarray(sh.document(i)[0])[np.asarray(sh.document(i)[1]) == Modality[m.upper()]]
                              for i in range(len(sh))])
        q = np.unique(ids, return_counts=True)[1] / len(ids)
        assert n == len(ids) and np.isclose(h, -(q * np.log(q)).sum()) and 0 <= h_level <= h + 1e-9
    cb = sh.vocab.codebooks["audio"]
    assert cb.levels > 1 and ent["audio"][2] < ent["audio"][1]  # the level of each code is known: less entropy
    assert ent["image"][2] <= ent["image"][1]


def test_drop_conditions_removes_the_text_before_each_media_span():
    T, I = Modality.TEXT, Modality.IMAGE
    ids = np.array([0, 5, 6, 100, 101, 102, 7, 8, 200, 201, 1])
    mod = np.array([T, T, T, I, I, I, T, T, Modality.AUDIO, Modality.AUDIO, T])
    i2, m2 = drop_conditions(ids, mod)
    assert i2.tolist() == [0, 100, 101, 102, 200, 201, 1]
    assert drop_conditions(ids[:3], mod[:3])[0].tolist() == [0, 5, 6]  # no media: unchanged


def test_cond_dropout_is_seeded_and_near_its_rate(shards):
    sh = read_shards(shards)
    a = PackedBatches(sh, 64, 4, seed=1, eval_fraction=0.0, cond_dropout=0.5)
    dropped = [len(a._doc(i, e)[0]) < len(sh.document(i)[0]) for e in range(40) for i in (0, 1)]
    assert 0.3 < np.mean(dropped) < 0.7
    b = PackedBatches(sh, 64, 4, seed=1, eval_fraction=0.0, cond_dropout=0.5)
    assert all(torch.equal(x.ids, y.ids) for x, y in ((a.next(), b.next()) for _ in range(3)))


def _cli(*args, out, torchrun=0, env=None):
    pre = [sys.executable, "-m", "unitok.cli"]
    if torchrun:
        pre = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}",
               f"--master_port={_free_port()}", "-m", "unitok.cli"]
    return subprocess.run(pre + list(map(str, args)) + ["--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**ENV, **(env or {})})


def test_train_logs_losses_per_modality_and_loads(shards, tmp_path):
    from unitok.checkpoint import load_model

    r = _cli("train", DEBUG, "--data", shards, out=tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_text", "loss_image", "loss_audio"} <= set().union(*recs)
    assert any("eval_loss_image" in x for x in recs)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 5000
    card = (tmp_path / "run" / "checkpoint" / "README.md").read_text()
    assert "| image |" in card and "condition dropout 0.1" in card and "unigram entropy" in card
    summ = json.loads((tmp_path / "run" / "summary.json").read_text())
    ent = unigram_entropy(read_shards(shards), PackedBatches(read_shards(shards), 64, 8, 0, 0.2).train_docs)
    assert np.isclose(summ["unigram_entropy_image"], ent["image"][1]) and "eval_loss_image" in summ
    assert "per level" in r.stdout
    m = load_model(tmp_path / "run")
    assert set(m.tokenizers) == {"text", "image", "audio"} and m.vocab.hash == read_shards(shards).vocab.hash
    st = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert st["task"]["cond_dropout"] == 0.1
    # a recipe error and a vocabulary that does not match the shards are one-line errors
    r = _cli("train", DEBUG, "bidirectional_images=true", "--data", shards, out=tmp_path / "bad")
    assert r.returncode == 2 and "loss_weights.image=0" in r.stderr and r.stderr.count("\n") == 1


def test_kill_resume_and_ranks(shards, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert _cli("train", DEBUG, "--data", shards, out=full).returncode == 0
    r = _cli("train", DEBUG, "--data", shards, out=cut, env={"UNITOK_KILL_AFTER_CHECKPOINT": "5"})
    assert r.returncode == -9
    r = _cli("train", DEBUG, "--data", shards, "--resume", out=cut)
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors.torch import load_file

    a, b = (load_file(str(p / "checkpoint" / "model.safetensors")) for p in (full, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(full) == _losses(cut)
    for mode in ("ddp", "fsdp2"):
        r = _cli("train", DEBUG, f"run.parallel={mode}", "--data", shards, out=tmp_path / mode, torchrun=2)
        assert r.returncode == 0, r.stderr[-3000:]
        la, lb = _losses(full), _losses(tmp_path / mode)
        rel = max(abs(la[k] - lb[k]) / abs(la[k]) for k in la)
        print(f"unified {mode}: max relative loss difference 1 vs 2 ranks {rel:.2e}")
        assert rel < 1e-4, (mode, rel)  # measured 9.2e-6: summation order only


def test_configs_load():
    from unitok.config import load_config
    from unitok.training.unified import UnifiedConfig

    for name in ("unified-debug", "unified-cpu", "unified-1b"):
        cfg = load_config(UnifiedConfig, ROOT / "configs" / "train" / f"{name}.yaml")
        assert cfg.seq_len <= cfg.model.max_seq_len
    assert load_config(UnifiedConfig, ROOT / "configs" / "train" / "unified-1b.yaml").run.parallel == "fsdp2"


def test_init_from_a_text_lm_copies_text_rows(shards, corpus, tmp_path):  # noqa: F811
    """A text LM trained with the shards' text tokenizer seeds the unified model: every block and the
    text + special rows of the embedding are copied; a different text tokenizer is refused."""
    from unitok.checkpoint import CKPT_DIR, save_checkpoint
    from unitok.errors import VocabMismatchError
    from unitok.model.transformer import UnifiedTransformer
    from unitok.tokenizers.text import TextTokenizer
    from unitok.training.lm import text_vocab
    from unitok.config import load_config, to_dict
    from unitok.training.loop import Engine
    from unitok.training.unified import UnifiedConfig, UnifiedTask

    tok = TextTokenizer.from_pretrained(corpus / "tok_text")
    lm_vocab = text_vocab(tok)
    cfg = load_config(UnifiedConfig, DEBUG, ["run.threads=1"])
    lm_cfg = load_config(UnifiedConfig, DEBUG).model
    lm_cfg.vocab_size = lm_vocab.size
    torch.manual_seed(5)
    lm = UnifiedTransformer(lm_cfg)
    save_checkpoint(tmp_path / "lm" / CKPT_DIR, kind="transformer", config=to_dict(lm_cfg), modules={"model": lm},
                    state={"step": 0}, vocab=lm_vocab, tokenizers={"text": tok})
    cfg.init_from = str(tmp_path / "lm")
    task = UnifiedTask(cfg, Engine(cfg.run, cfg.optim, tmp_path / "run", recipe={}), read_shards(shards))
    n = lm_vocab.size_start
    assert torch.equal(task.model.tok_emb.weight[:n], lm.tok_emb.weight[:n])
    assert torch.equal(task.model.blocks[1].attn.wq.weight, lm.blocks[1].attn.wq.weight)
    assert not torch.equal(task.model.tok_emb.weight[n:n + 8], torch.zeros(8, lm_cfg.dim))  # new rows initialised
    # a text LM with another text tokenizer
    (tmp_path / "t2.txt").write_text("completely different words make another tokenizer here\n" * 50)
    other = TextTokenizer.train([tmp_path / "t2.txt"], vocab_size=300)
    save_checkpoint(tmp_path / "lm2" / CKPT_DIR, kind="transformer", config=to_dict(lm_cfg), modules={"model": lm},
                    state={"step": 0}, vocab=text_vocab(other), tokenizers={"text": other})
    cfg.init_from = str(tmp_path / "lm2")
    with pytest.raises(VocabMismatchError, match="text tokenizer differs"):
        UnifiedTask(cfg, Engine(cfg.run, cfg.optim, tmp_path / "run2", recipe={}), read_shards(shards))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_bench_train_reports_both_loops(tmp_path, monkeypatch, device):
    from unitok.cli import main
    from unitok.training.loop import Engine

    step, grads, seen = torch.optim.AdamW.step, [], []
    init, engines = Engine.__init__, []

    def spy(opt, *a, **kw):  # each optimizer step of either loop: parameters without a gradient, and what
        groups = opt.param_groups  # it steps: which loop (the engine adds base_lr), groups, devices
        grads.append(sum(p.grad is None or not p.grad.any() for g in groups for p in g["params"]))
        seen.append(("engine" if "base_lr" in groups[0] else "bare",
                     [(len(g["params"]), g["weight_decay"]) for g in groups],
                     {p.device for g in groups for p in g["params"]}))
        return step(opt, *a, **kw)

    def engine_spy(self, *a, **kw):
        init(self, *a, **kw)
        engines.append(self.device)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    monkeypatch.setattr(Engine, "__init__", engine_spy)
    # image targets weighted 0.5: a plain mean loss would differ from the engine's
    assert main(["bench", "train", str(DEBUG), f"run.device={device}", "loss_weights.image=0.5", "--steps", "3",
                 "--repeats", "2", "--json", str(tmp_path / "b.json")]) == 0
    assert grads == [0] * 4 * 3  # both loops train: 3 steps each per repeat, every parameter with a gradient
    # the order rotates (engine first, then bare first); both step the same groups (weight decay only on
    # linear weights) of a model on the engine's device
    assert [loop for loop, _, _ in seen] == ["engine"] * 3 + ["bare"] * 6 + ["engine"] * 3
    assert all(groups == seen[0][1] for _, groups, _ in seen) and [wd for _, wd in seen[0][1]] == [0.1, 0.0]
    assert engines[0].type == device and all(devs == {engines[0]} for _, _, devs in seen)
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["engine_tokens_per_s"] > 0 and r["bare_tokens_per_s"] > 0 and len(r["engine_runs"]) == 2
    assert r["engine_vs_bare"] == pytest.approx(r["engine_tokens_per_s"] / r["bare_tokens_per_s"])
    ratios = [e / b for e, b in zip(r["engine_runs"], r["bare_runs"])]
    assert r["engine_vs_bare_runs"] == pytest.approx(ratios)
    assert r["engine_vs_bare_spread"] == pytest.approx({"min": min(ratios), "median": sum(ratios) / 2,
                                                        "max": max(ratios)})
    # same seed, same first batch, same loss path: the same step-1 loss
    assert r["step1_loss"]["engine"] == pytest.approx(r["step1_loss"]["bare"], rel=1e-6)
    assert 0 <= r["data_wait_share"] < 1 and r["achieved_flops_per_s"] > 0 and r["peak_rss_mb"] > 0
    assert main(["bench", "train", str(DEBUG), "--steps", "1", "--json", str(tmp_path / "b.json")]) == 2  # nothing timed
