"""pretokenize's resume path on a small text corpus, in process and fast (tests/test_pretokenize.py
interrupts the mixed media corpus and compares worker counts, about 20 s): an interrupted run, even
one whose files hold bytes written after its last commit, resumes to the uninterrupted run's bytes
and stats; a resume with other inputs or policy is refused; a complete output is left alone."""

import json

import numpy as np
import pytest

from unitok.data.pretokenize import PretokenizeConfig, pretokenize
from unitok.data.shards import FILES
from unitok.errors import ConfigError, DataError

CFG = PretokenizeConfig(max_doc_tokens=40)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from unitok.tokenizers.text import HFTextTokenizer

    d = tmp_path_factory.mktemp("text")
    words = "a cat sat on the mat while the dog slept by the door and a bird sang".split()
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *dict.fromkeys(words)])}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()  # a word-level tokenizer.json: no training to wait for
    HFTextTokenizer(tk.to_str().encode()).save_pretrained(d / "tok")
    docs = [json.dumps({"segments": [{"text": " ".join(words[i % 7:i % 7 + 2 + i])}]}) for i in range(9)]
    docs[2] = json.dumps({"segments": [{"text": "look"}, {"image": "cat.png"}]})  # skipped: no image tokenizer
    docs[4] = "{not json"  # skipped as it is read, as is the last line
    docs[6] = json.dumps({"segments": [{"text": " ".join(words * 4)}]})  # skipped: over max_doc_tokens
    (d / "docs.jsonl").write_text("\n".join(docs + ["[]"]) + "\n")
    return d


def _run(c, out, cfg=CFG, **kw):
    return pretokenize([c / "docs.jsonl"], [c / "tok"], out, cfg, progress=False, **kw)


def _files(out):
    return {f: (out / f).read_bytes() for f in FILES}


def _stats(out):
    return {k: v for k, v in json.loads((out / "stats.json").read_text()).items() if k != "timings"}


def test_an_interrupted_run_resumes_to_the_same_bytes(corpus, tmp_path):
    ref = _run(corpus, tmp_path / "ref")
    assert ref["documents"] == 6 and ref["tokens_per_modality"] == {"text": ref["tokens"]}
    assert (ref["timings"]["workers"], ref["timings"]["processes"]) == (0, 1)
    # most frequent first, then by name (not in the order they were met)
    assert list(ref["skip_reasons"].items()) == [("malformed line", 2), ("N tokens > max_doc_tokens N", 1),
                                                 ("no image tokenizer given", 1)]
    image = next(x for x in ref["skipped"] if x["source"].endswith("docs.jsonl:3"))
    assert image["reason"] == f"{corpus / 'cat.png'}: no image tokenizer given"  # the media file named first
    cut = tmp_path / "new" / "runs" / "cut"  # folders made as needed
    with pytest.raises(KeyboardInterrupt):
        _run(corpus, cut, stop_after=5, commit_every=2)
    prog = json.loads((cut / "progress.json").read_text())
    assert prog["docs_done"] == 5 and prog["sizes"] == [(cut / f).stat().st_size for f in FILES]
    assert prog["stats"]["documents"] == 4 and not (cut / "stats.json").exists()
    with pytest.raises(DataError, match="--resume"):
        _run(corpus, cut)
    with pytest.raises(KeyboardInterrupt):  # interrupted again: stop_after counts from the resume point
        _run(corpus, cut, resume=True, stop_after=2)
    assert json.loads((cut / "progress.json").read_text())["docs_done"] == 7
    for f in FILES:  # a run killed after writing more than it committed
        with open(cut / f, "ab") as fh:
            fh.write(b"\x07" * 24)
    stats = _run(corpus, cut, resume=True)
    assert _files(cut) == _files(tmp_path / "ref")
    assert _stats(cut) == _stats(tmp_path / "ref") == {k: v for k, v in stats.items() if k != "timings"}
    assert not (cut / "progress.json").exists()


def test_ctrl_c_between_commits_keeps_every_document_done(corpus, tmp_path, monkeypatch):
    """A KeyboardInterrupt from inside tokenizing (Ctrl-C) commits what was written before it."""
    from unitok.data import pretokenize as pt

    real, calls = pt.Tokenizing.__call__, []

    def interrupted(self, doc):
        calls.append(doc)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, doc)

    _run(corpus, tmp_path / "ref")
    monkeypatch.setattr(pt.Tokenizing, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(corpus, tmp_path / "cut", commit_every=100)
    monkeypatch.setattr(pt.Tokenizing, "__call__", real)
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["docs_done"] == 3
    _run(corpus, tmp_path / "cut", resume=True)
    assert _files(tmp_path / "cut") == _files(tmp_path / "ref")


def test_resume_is_refused_with_other_inputs_or_policy(corpus, tmp_path):
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _run(corpus, cut, stop_after=2)
    before = _files(cut)
    with pytest.raises(ConfigError, match="different inputs, tokenizers or policy"):
        _run(corpus, cut, cfg=PretokenizeConfig(max_doc_tokens=41), resume=True)
    with pytest.raises(ConfigError, match="different inputs"):
        pretokenize([corpus / "docs.jsonl", corpus / "docs.jsonl"], [corpus / "tok"], cut, CFG, progress=False,
                    resume=True)
    assert _files(cut) == before


def test_resume_of_a_fresh_or_complete_output(corpus, tmp_path, capsys):
    """--resume where nothing was started is a plain run; on a complete output it returns its stats and
    writes nothing, or refuses other inputs."""
    _run(corpus, tmp_path / "ref")
    st = _run(corpus, tmp_path / "new", resume=True)
    assert _files(tmp_path / "new") == _files(tmp_path / "ref") and st["documents"] == 6
    snap = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "new").iterdir()}
    capsys.readouterr()
    again = pretokenize([corpus / "docs.jsonl"], [corpus / "tok"], tmp_path / "new", CFG, progress=True, resume=True)
    assert again == json.loads((tmp_path / "new" / "stats.json").read_text())
    assert "already complete" in capsys.readouterr().err
    _run(corpus, tmp_path / "new", resume=True)  # progress=False: says nothing
    assert capsys.readouterr().err == ""
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "new").iterdir()} == snap
    with pytest.raises(ConfigError, match="is complete, from other inputs"):
        _run(corpus, tmp_path / "new", cfg=PretokenizeConfig(max_doc_tokens=41), resume=True)
    empty = tmp_path / "empty"  # a complete output that kept nothing: the same error as the run that made it
    with pytest.raises(DataError, match="no document kept") as first:
        pretokenize([corpus / "docs.jsonl"], [corpus / "tok"], empty, PretokenizeConfig(max_doc_tokens=1),
                    progress=False)
    with pytest.raises(DataError, match="no document kept") as second:
        pretokenize([corpus / "docs.jsonl"], [corpus / "tok"], empty, PretokenizeConfig(max_doc_tokens=1),
                    progress=False, resume=True)
    assert str(first.value) == str(second.value)


def test_ctrl_c_while_the_workers_start_keeps_the_resume_point(corpus, tmp_path, monkeypatch):
    """A resumed run interrupted before its first new document (the worker pool takes seconds to start)
    records the documents already done, not 0 (which made the next resume write them a second time)."""
    import multiprocessing

    _run(corpus, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        _run(corpus, tmp_path / "cut", stop_after=3)

    class Interrupted:
        def Pool(self, *a, **kw):  # noqa: N802 (multiprocessing's name)
            raise KeyboardInterrupt

    monkeypatch.setattr(multiprocessing, "get_context", lambda method: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        _run(corpus, tmp_path / "cut", resume=True, workers=2)
    monkeypatch.undo()
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["docs_done"] == 3
    _run(corpus, tmp_path / "cut", resume=True)
    assert _files(tmp_path / "cut") == _files(tmp_path / "ref")


def _killed_run(c, out, at: int, **kw) -> None:
    """pretokenize in a forked child that dies (os._exit, like kill -9: no cleanup, no buffers flushed)
    while tokenizing its `at`-th document."""
    import os

    from unitok.data import pretokenize as pt

    pid = os.fork()
    if pid == 0:
        try:
            real, calls = pt.Tokenizing.__call__, []

            def dying(self, doc):
                calls.append(doc)
                if len(calls) == at:
                    os._exit(9)
                return real(self, doc)

            pt.Tokenizing.__call__ = dying
            _run(c, out, **kw)
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9


def test_a_killed_run_resumes_from_its_last_periodic_commit(corpus, tmp_path):
    """Killed while tokenizing document 6 with a commit every 2: progress.json says 4 documents, and the
    files hold at least what it says (flushed before it was written); the resume drops the rest."""
    _run(corpus, tmp_path / "ref")
    cut = tmp_path / "cut"
    _killed_run(corpus, cut, at=6, commit_every=2)
    prog = json.loads((cut / "progress.json").read_text())
    assert prog["docs_done"] == 4 and all(n <= (cut / f).stat().st_size for n, f in zip(prog["sizes"], FILES))
    _run(corpus, cut, resume=True)
    assert _files(cut) == _files(tmp_path / "ref")
    # killed before its first commit: the next run starts over in the same folder
    _killed_run(corpus, tmp_path / "early", at=2, commit_every=100)
    assert not (tmp_path / "early" / "progress.json").exists()
    _run(corpus, tmp_path / "early", resume=True)
    assert _files(tmp_path / "early") == _files(tmp_path / "ref")


def test_a_document_of_exactly_max_doc_tokens_is_kept(corpus, tmp_path):
    ref = _run(corpus, tmp_path / "ref")
    longest = int(np.diff(np.fromfile(tmp_path / "ref" / "offsets.bin", np.int64)).max())
    st = _run(corpus, tmp_path / "edge", cfg=PretokenizeConfig(max_doc_tokens=longest))
    assert st["documents"] == ref["documents"] and _files(tmp_path / "edge") == _files(tmp_path / "ref")


def test_the_callers_thread_count_comes_back(corpus, tmp_path):
    """pretokenize encodes with one thread; a training run started after it in the same process (the
    demo, pretrain_shared) got one thread too, until the count was restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _run(corpus, tmp_path / "out")
        assert torch.get_num_threads() == 2
        with pytest.raises(DataError):  # also when it fails
            _run(corpus, tmp_path / "out")  # not empty, no --resume
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
