"""`unitok data split`: a tiny fake corpus laid out like ../shared/corpus (placeholder files: the split
reads names and SOURCES.tsv only), split by source."""

import json

import pytest

from unitok.cli import main as cli
from unitok.data.corpus import corpus_files, read_sources, split_corpus, write_split

SPEECH_HEAD = "file\ttext\tlanguage\tseconds\tpackage\tlicence\tpath_in_package\n"


@pytest.fixture
def corpus(tmp_path):
    c = tmp_path / "corpus"
    for d in ("photos", "speech", "video", "text"):
        (c / d).mkdir(parents=True)
    rows = []
    for pkg in ("wall", "edu"):
        for i in range(6):
            (c / "photos" / f"{pkg}_{i}.jpg").write_bytes(b"x")
            rows.append(f"{pkg}_{i}.jpg\t10x10\t{pkg}\tCC0\t{pkg}/{i}.jpg\n")
    (c / "photos" / "SOURCES.tsv").write_text("file\toriginal_size\tpackage\tlicence\tpath_in_package\n" + "".join(rows))
    rows, trans = [], []
    for folder in ("digits", "letters", "dictate"):  # one voice, three prompt folders: 8 kHz telephone prompts
        for i in range(4):
            name = f"ast_{folder}_{i}.flac"
            rows.append(f"{name}\tword {i}\ten\t1.0\tdeb:ast\tCC\tast/sounds/en_US_f_Allison/{folder}/{i}.wav\n")
            trans.append(f"{name}\tword {i}\n")
    for lang in ("fr", "ro"):
        for cat in ("birds", "fruit", "tools"):
            for i in range(3):  # the same stamp folder in two languages: different speakers, different groups
                name = f"tux_{lang}_{cat}_{i}.flac"
                rows.append(f"{name}\tdesc {i}\t{lang}\t1.0\tdeb:tux\tGPL\ttux/stamps/{cat}/{i}_desc_{lang}.ogg\n")
                trans.append(f"{name}\tdesc {i}\n")
    for r in rows:
        (c / "speech" / r.split("\t")[0]).write_bytes(b"x")
    (c / "speech" / "SOURCES.tsv").write_text(SPEECH_HEAD + "".join(rows))
    (c / "speech" / "transcripts.tsv").write_text("".join(trans))
    rows = []
    for rec, n in (("a.avi", 5), ("b.avi", 3), ("c.mpg", 1), ("d.mp4", 4)):
        for i in range(n):
            name = f"{rec.split('.')[0]}_{i:02d}.mp4"
            (c / "video" / name).write_bytes(b"x")
            rows.append(f"{name}\t{8 * i}.0\t64x64\t10fps\tpkg\tMIT\t{rec}\n")
    (c / "video" / "SOURCES.tsv").write_text("file\tstart_s\toriginal_resolution\tfps\tpackage\tlicence\t"
                                             "original_file\n" + "".join(rows))
    for b in ("emma", "persuasion", "devil"):
        (c / "text" / f"{b}.txt").write_text("words\n")
    return c


def _group_sides(c, split):
    group = {(f, n): g for f, n, g, _ in corpus_files(c)}
    sides = {}
    for folder, s in split.items():
        for side, names in s.items():
            for n in names:
                sides.setdefault((folder, group[folder, n]), set()).add(side)
    return sides


@pytest.mark.parametrize("seed", range(5))
def test_no_source_on_both_sides_and_each_stratum_on_both(corpus, seed):
    split = split_corpus(corpus, 0.3, seed)
    sides = _group_sides(corpus, split)
    assert all(len(s) == 1 for s in sides.values()), [g for g, s in sides.items() if len(s) > 1]
    videos = {g: s for (f, g), s in sides.items() if f == "video"}
    assert set(videos) == {"a.avi", "b.avi", "c.mpg", "d.mp4"}  # clips grouped by their recording
    # speech: one group per (package, language, recording folder); fr and ro of one stamp folder apart
    speech = {g for f, g in sides if f == "speech"}
    assert len(speech) == 3 + 2 * 3
    # every stratum with two or more groups holds some out and keeps some: each language, 8 kHz voice,
    # photo package and the video on both sides
    for prefix in ("deb:ast|en|", "deb:tux|fr|", "deb:tux|ro|"):
        assert {x for (f, g), s in sides.items() if g.startswith(prefix) for x in s} == {"train", "held-out"}
    for pkg in ("wall_", "edu_"):
        assert {x for (f, g), s in sides.items() if f == "photos" and g.startswith(pkg) for x in s} == \
            {"train", "held-out"}
    assert {x for s in videos.values() for x in s} == {"train", "held-out"}
    assert sum(len(v) for s in split.values() for v in s.values()) == len(corpus_files(corpus))


def test_deterministic_per_seed(corpus):
    assert split_corpus(corpus, 0.3, 1) == split_corpus(corpus, 0.3, 1)
    assert any(split_corpus(corpus, 0.3, 1) != split_corpus(corpus, 0.3, s) for s in (2, 3, 4))


def test_writes_symlink_folders_with_each_sides_tables(corpus, tmp_path, capsys):
    out = tmp_path / "split"
    assert cli(["data", "split", str(corpus), "--out", str(out), "--held-out-fraction", "0.3", "--seed", "2"]) == 0
    assert "held out" in capsys.readouterr().out
    report = json.loads((out / "split.json").read_text())
    split = split_corpus(corpus, 0.3, 2)
    for folder, s in split.items():
        for side, names in s.items():
            d = out / side / folder
            media = sorted(p.name for p in d.iterdir() if p.is_symlink())
            assert media == sorted(names)
            assert all((d / n).resolve() == (corpus / folder / n).resolve() for n in names)
            if folder in ("photos", "speech", "video"):
                assert sorted(read_sources(d)) == sorted(names)  # that side's rows, the header kept
        assert report["folders"][folder]["held_out_files"] == len(s["held-out"])
    for side in ("train", "held-out"):
        trans = (out / side / "speech" / "transcripts.tsv").read_text().splitlines()
        assert sorted(t.split("\t")[0] for t in trans) == sorted(split["speech"][side])


def test_bad_arguments_are_one_line_errors(corpus, tmp_path, capsys):
    assert cli(["data", "split", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli(["data", "split", str(corpus), "--out", str(tmp_path / "o"), "--held-out-fraction", "1"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    write_split(corpus, tmp_path / "o", 0.3, 0)
    assert cli(["data", "split", str(corpus), "--out", str(tmp_path / "o")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
