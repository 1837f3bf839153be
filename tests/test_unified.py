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
from unitok.data.packed import PackedBatches, drop_conditions, split_documents
from unitok.data.pretokenize import document_kinds, pretokenize, read_shards, unigram_entropy
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


def test_bench_train_reports_both_loops(tmp_path, monkeypatch):
    from unitok.cli import main

    step, grads = torch.optim.AdamW.step, []

    def spy(opt, *a, **kw):  # each optimizer step of either loop: parameters without a gradient
        grads.append(sum(p.grad is None or not p.grad.any() for g in opt.param_groups for p in g["params"]))
        return step(opt, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    assert main(["bench", "train", str(DEBUG), "--steps", "3", "--repeats", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert grads == [0] * 2 * 3  # both loops train: 3 steps each, every parameter with a gradient
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["engine_tokens_per_s"] > 0 and r["bare_tokens_per_s"] > 0 and len(r["engine_runs"]) == 1
    assert r["engine_vs_bare"] == pytest.approx(r["engine_tokens_per_s"] / r["bare_tokens_per_s"])
    assert 0 <= r["data_wait_share"] < 1 and r["achieved_flops_per_s"] > 0 and r["peak_rss_mb"] > 0
