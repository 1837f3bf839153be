"""Mutation testing for the modules whose bugs the tests must catch (`make mutate`, not part of `make test`).

    .venv/bin/python scripts/mutate.py                  # every module below; writes runs/mutation/results.json
    .venv/bin/python scripts/mutate.py grammar packed   # some of them
    .venv/bin/python scripts/mutate.py --out FILE       # the results file to write
    .venv/bin/python scripts/mutate.py --list sample    # print the mutants, run nothing
    .venv/bin/python scripts/mutate.py --show runs/mutation/results.json    # its scores and survivors
    .venv/bin/python scripts/mutate.py --rerun runs/mutation/results.json   # only its survivors

A small mutator of our own, built on `ast` (no extra package; works offline): each mutant changes one
place of one module (operator swap, comparison flip, `and`/`or`, dropped `not`, negated `if`/`while`
condition, integer +/-1, True/False swap, `return x` -> `return None`, a call statement -> `pass`).
Strings and docstrings are not mutated (messages would only give noise). Mutants are numbered in
source order (line, column), so a module's numbers only change when its source does.

The files git tracks (and untracked files it does not ignore) are copied once to a scratch directory,
so a clean checkout and a working tree with run outputs give the same run. For each mutant the
mutated source is written there and a child forked from a worker that has already imported torch runs
only that module's selected tests (`pytest -x -q`, Hypothesis derandomised). A mutant is killed when a
test fails; a mutant whose tests run past the timeout (a multiple of the unmutated tests' time,
measured first) is run once more with twice the timeout, and only counts as killed (`timeout`) when it
overruns again, so a loaded machine does not kill mutants.

Output: the results file (default runs/mutation/results.json; its path is printed first and last):
the command, commit, machine load, and per module its score, every mutant's result and every
survivor with its line, mutation and diff. `--rerun FILE` runs only FILE's survivors (FILE's killed
mutants stay killed) and writes FILE with `.rerun` before its suffix: a convenience after adding
tests, never the score of record. See docs/mutation.md.
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import difflib
import gc
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runs" / "mutation" / "results.json"


@dataclass(frozen=True)
class Target:
    file: str
    tests: list[str]  # fast tests that cover it, run per mutant (slow ones are named in docs/mutation.md)
    functions: list[str] | None = None  # only these top-level functions / Class.method names (None: all)


MODULES: dict[str, Target] = {
    "vocab": Target("unitok/vocab.py", [
        "tests/test_vocab.py",
        "tests/test_vocab_edges.py",
        "tests/test_span_layout.py::test_span_formats_and_layouts_are_checked",
        "tests/test_span_layout.py::test_a_manifest_without_spans_loads_as_the_default_layout_and_keeps_its_hash",
        "tests/test_span_layout.py::test_another_layout_is_recorded_hashed_and_checked",
        "tests/test_span_layout.py::test_another_layout_moves_every_id_after_the_text",
        "tests/test_span_layout.py::test_another_layout_packs_unpacks_and_the_grammar_accepts_it",
        "tests/test_span_layout.py::test_id_dtype_at_the_uint16_limit_whatever_the_layout",
    ]),
    "checkpoint": Target("unitok/checkpoint.py", [
        "tests/test_checkpoint.py",
        "tests/test_lm_training.py::test_load_model_errors",
        "tests/test_lm_training.py::test_checkpoint_trained_with_triton_kernels_loads_with_auto_backends",
        "tests/test_checkpoint_edges.py",
        # the trust checks that run in process (the crafted-checkpoint tests also run the CLI: ~10 s)
        "tests/test_checkpoint_trust.py::test_links_and_special_files_are_never_copied_or_read",
        "tests/test_checkpoint_trust.py::test_inside_refuses_anything_but_a_plain_name",
        "tests/test_checkpoint_trust.py::test_absolute_weights_name_and_text_model_file_are_refused",
        "tests/test_checkpoint_trust.py::test_dcp_metadata_is_checked_before_use",
    ]),
    "quantizers": Target("unitok/tokenizers/quantizers.py", [
        "tests/test_quantizers.py",
        "tests/test_quantizer_refit.py",
        "tests/test_lm_presets.py::test_kmeans_chunked_equals_whole_and_cosine_centres_are_unit",
    ]),
    "packed": Target("unitok/data/packed.py", [
        "tests/test_packed.py",
        "tests/test_packed_split.py",  # the split by source on in-memory shards (test_unified.py's: ~4 s to build)
        "tests/test_unified.py::test_split_is_seeded_and_stratified_by_document_kind",
        "tests/test_unified.py::test_drop_conditions_removes_the_text_before_each_media_span",
        "tests/test_span_layout.py::test_another_layout_in_guidance_and_packed_batches",
    ]),
    "grammar": Target("unitok/grammar.py", [
        "tests/test_grammar_rules.py",
        "tests/test_grammar.py",
        "tests/test_span_layout.py::test_another_layout_packs_unpacks_and_the_grammar_accepts_it",
        "tests/test_generation.py::test_spans_are_kept_inside_the_context",
    ]),
    # the parts that decide which token comes next: settings, filters, penalties, masks, the KV cache's
    # rows and positions (generate_batch's loop and guidance are covered by tests/test_generation.py too,
    # but not mutated here)
    "sample": Target("unitok/generation/sample.py", [
        "tests/test_sampler_rules.py",
        "tests/test_sampling.py",
        "tests/test_generation.py::test_kv_cache_decoding_equals_full_recomputation",
        "tests/test_generation.py::test_batched_prompts_of_different_lengths_decode_as_alone",
        "tests/test_generation.py::test_finished_rows_do_not_disturb_the_others",
        "tests/test_generation.py::test_seed_reproducible_and_different_seeds_differ",
        "tests/test_generation.py::test_top_k_1_and_temperature_0_are_greedy",
        "tests/test_generation.py::test_repetition_penalty_lowers_the_repeated_token",
        "tests/test_generation.py::test_a_request_longer_than_the_context_is_refused",
        "tests/test_generation.py::test_sampling_settings_per_modality",
        "tests/test_generation.py::test_spans_are_kept_inside_the_context",
        "tests/test_generation.py::test_guidance_only_inside_spans_and_rebuilt_when_a_span_opens",
    ], ["Sampling.__post_init__", "resolve_sampling", "filter_logits", "penalize_repeats", "_draw", "check_context",
        "_Cached._last", "_Cached.prefill", "_Cached.step", "_Cached.replace", "_left_pad", "_masks", "_sample"]),
    # the engine's checkpoint and resume: what it saves, how it reads it back, the recipe check and the
    # schedule it resumes on (fit() itself is covered by tests/test_engine.py's kill -9 tests, ~1 min each)
    "loop": Target("unitok/training/loop.py", [
        "tests/test_engine_resume.py",
        "tests/test_checkpoint.py::test_recipe_diff_names_changed_keys_and_ignores_resumable_ones",
        "tests/test_checkpoint.py::test_lr_factor_schedules",
        "tests/test_lm_training.py::test_schedule_warmup_then_cosine_or_wsd_to_min",
    ], ["lr_factor", "recipe_diff", "encode_rng_state", "decode_rng_state", "python_rng_state", "_np_json", "_np_state",
        "Engine._check_resume", "Engine.restore", "Engine._rank_state", "Engine.save"]),
    # the resume path: pretokenize() (its progress file, truncation to the last commit, the interrupt)
    # and --resume on a complete output
    "pretokenize": Target("unitok/data/pretokenize.py", [
        "tests/test_pretokenize_resume.py",
        "tests/test_data_limits.py::test_resume_on_a_complete_output_changes_nothing",
        "tests/test_pretokenize.py::test_counts_skips_and_decoding",
        "tests/test_pretokenize.py::test_sources_name_each_documents_input_and_chunk",  # sources.jsonl, split chunks
    ], ["pretokenize", "_complete"]),
}

BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
              ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
              ast.LShift: ast.RShift, ast.RShift: ast.LShift}
CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


@dataclass
class Mutant:
    id: int
    line: int  # in the module's source as it is in the repository
    col: int
    kind: str
    original: str  # the changed line, before and after (as ast.unparse writes it)
    mutated: str
    status: str = ""  # killed | survived | timeout
    killed_by: str = ""  # the first test that failed on it
    seconds: float = 0.0
    retried: bool = False  # timed out once and was run again


def _skip_nodes(tree: ast.Module, only: list[str] | None) -> tuple[set[int], set[int]]:
    """(ids of nodes never to mutate: docstrings, annotations, __all__; ids of nodes inside `only`)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip.update(id(n) for n in ast.walk(body[0]))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for a in ast.walk(node.args):
                if isinstance(a, ast.arg) and a.annotation is not None:
                    skip.update(id(n) for n in ast.walk(a.annotation))
            if node.returns is not None:
                skip.update(id(n) for n in ast.walk(node.returns))
        if isinstance(node, ast.AnnAssign):
            skip.update(id(n) for n in ast.walk(node.annotation))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            skip.update(id(n) for n in ast.walk(node))
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(id(n) for n in ast.walk(node))
    inside: set[int] | None = None
    if only is not None:
        inside = set()
        for node in tree.body:
            targets = [(node.name, node)] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else []
            if isinstance(node, ast.ClassDef):
                targets += [(f"{node.name}.{m.name}", m) for m in node.body if isinstance(m, ast.FunctionDef)]
            for name, n in targets:
                if name in only:
                    inside.update(id(x) for x in ast.walk(n))
    return skip, inside


def _mutations(node: ast.AST) -> list[tuple[str, callable]]:
    """(description, function that mutates `node` in place) for every mutation of this node."""
    out = []
    if isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAP:
        new = BINOP_SWAP[type(node.op)]
        out.append((f"{type(node.op).__name__} -> {new.__name__}", lambda n, new=new: setattr(n, "op", new())))
    elif isinstance(node, ast.AugAssign) and type(node.op) in BINOP_SWAP:
        new = BINOP_SWAP[type(node.op)]
        out.append((f"{type(node.op).__name__}= -> {new.__name__}=", lambda n, new=new: setattr(n, "op", new())))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in CMP_SWAP:
                new = CMP_SWAP[type(op)]

                def f(n, i=i, new=new):
                    n.ops[i] = new()
                out.append((f"{type(op).__name__} -> {new.__name__}", f))
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append((f"{type(node.op).__name__} -> {new.__name__}", lambda n, new=new: setattr(n, "op", new())))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append(("drop not", "unwrap"))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        out.append(("drop unary -", "unwrap"))
    elif isinstance(node, (ast.If, ast.While, ast.IfExp)) and not isinstance(node.test, (ast.Compare, ast.UnaryOp, ast.BoolOp)):
        out.append(("negate condition", lambda n: setattr(n, "test", ast.UnaryOp(ast.Not(), n.test))))
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        out.append((f"{node.value} -> {not node.value}", lambda n: setattr(n, "value", not n.value)))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        v = node.value
        new = v + 1 if v in (0, 0.0) else (0 if type(v) is int and v == 1 else v + 1 if type(v) is int else v * 2)
        out.append((f"{v!r} -> {new!r}", lambda n, new=new: setattr(n, "value", new)))
    elif isinstance(node, ast.Return) and node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None):
        out.append(("return None", lambda n: setattr(n, "value", ast.Constant(None))))
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        out.append(("call -> pass", "pass"))
    return out


def _apply(tree: ast.Module, index: int, which: int) -> ast.Module:
    """A copy of `tree` with mutation `which` of the `index`-th node (ast.walk order) applied."""
    tree = copy.deepcopy(tree)
    parents = {}
    for p in ast.walk(tree):
        for f, v in ast.iter_fields(p):
            if isinstance(v, list):
                for i, c in enumerate(v):
                    if isinstance(c, ast.AST):
                        parents[id(c)] = (p, f, i)
            elif isinstance(v, ast.AST):
                parents[id(v)] = (p, f, None)
    node = list(ast.walk(tree))[index]
    desc, fn = _mutations(node)[which]
    if fn in ("unwrap", "pass"):
        repl = node.operand if fn == "unwrap" else ast.Pass()
        p, f, i = parents[id(node)]
        if i is None:
            setattr(p, f, repl)
        else:
            getattr(p, f)[i] = repl
    else:
        fn(node)
    return ast.fix_missing_locations(tree)


def mutants(path: Path, only: list[str] | None) -> tuple[str, list[tuple[Mutant, str]]]:
    """(the unparsed module, [(mutant, mutated source)]) in source order: by line, column, then the
    order of ast.walk (a node before its children) and of the node's mutations."""
    tree = ast.parse(path.read_text())
    base = ast.unparse(tree)
    skip, inside = _skip_nodes(tree, only)
    found = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip or (inside is not None and id(node) not in inside):
            continue
        for which, (desc, _) in enumerate(_mutations(node)):
            found.append(((node.lineno, node.col_offset, index, which), desc))
    out = []
    for (line, col, index, which), desc in sorted(found):
        new = ast.unparse(_apply(tree, index, which))
        if new == base:
            continue
        a, b = base.splitlines(), new.splitlines()
        ch = [op for op in difflib.SequenceMatcher(None, a, b).get_opcodes() if op[0] != "equal"]
        orig = " / ".join(a[ch[0][1]:ch[0][2]]).strip() if ch else ""
        mut = " / ".join(b[ch[0][3]:ch[0][4]]).strip() if ch else ""
        out.append((Mutant(len(out), line, col, desc, orig[:200], mut[:200]), new))
    return base, out


# ------------------------------------------------------------------ running
def _copy_tree(dst: Path) -> None:
    """The files a clean checkout has (plus untracked files git does not ignore), nothing it ignores."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("mutate: needs a git checkout (it copies the files git tracks)") from None
    for name in filter(None, names):
        s = ROOT / name
        if s.is_file() and not s.is_symlink():  # not a tracked file deleted here, nor a link (e.g. to a .venv)
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, dst / name)


def _run_tests(tree: Path, tests: list[str], timeout: float, log: Path) -> tuple[str, float]:
    """Fork a child that runs pytest on `tests` in `tree`; 'passed' | 'failed' | 'timeout'."""
    t0 = time.monotonic()
    pid = os.fork()
    if pid:
        try:
            os.setpgid(pid, pid)  # also here: the child may not have run yet when the timeout strikes
        except OSError:  # it already has (or has exited)
            pass
    if pid == 0:  # child, in a process group of its own: a timeout kills what its tests started too
        try:
            os.setpgid(0, 0)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(tree)
            sys.path.insert(0, str(tree))
            sys.dont_write_bytecode = False  # even under PYTHONDONTWRITEBYTECODE: the scratch copy's caches (_write)
            import pytest
            from hypothesis import Phase, settings

            # the same examples every run (a mutant's fate must not depend on luck), no example database,
            # no shrinking: a failing example kills the mutant, its minimal form does not matter here
            settings.register_profile("mutate", phases=[Phase.explicit, Phase.generate], deadline=None,
                                      derandomize=True, database=None)
            settings.load_profile("mutate")
            rc = pytest.main([*tests, "-x", "-q", "-rfE", "-p", "no:cacheprovider", "-W", "ignore"])
            os._exit(int(rc))
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            os._exit(99)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                return ("passed" if rc == 0 else "failed"), time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                return "timeout", time.monotonic() - t0
            time.sleep(0.02)
    finally:  # a timeout, Ctrl-C or SIGTERM: nothing the tests started outlives them
        try:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _write(module: Path, src: str) -> None:
    """Write a module's source and drop its cached bytecode: a pyc is trusted by the source's mtime (whole
    seconds) and size, which two mutants can share. The other modules' caches are kept (compiling them in
    every child took ~2 s of each mutant)."""
    module.write_text(src)
    for pyc in (module.parent / "__pycache__").glob(f"{module.stem}.*.pyc"):
        pyc.unlink()


def _killed_by(log: Path) -> str:
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", log.read_text(errors="replace"), re.M)  # pytest -x stops there
    return failed.group(1) if failed else "?"


def run_module(name: str, tree: Path, logs: Path, limit: int | None, tests: list[str] | None = None,
               previous: dict | None = None) -> dict:
    """Run every mutant of one module (or, with `previous` (its entry in an earlier results file), only
    that run's survivors); its entry in the results file."""
    t = MODULES[name]
    tests = tests or t.tests
    target = tree / t.file
    original = target.read_text()
    base, ms = mutants(ROOT / t.file, t.functions)
    src_hash = hashlib.sha256(base.encode()).hexdigest()[:16]
    if previous is not None:  # only the survivors of an earlier run; its killed mutants stay killed
        if previous["source_sha256"] != src_hash or previous["functions"] != t.functions:
            raise SystemExit(f"{name}: {t.file} changed since that run (mutant numbers differ); run it afresh")
        before = {m["id"]: m for m in previous["results"]}
        ms = [(m, src) for m, src in ms if m.id in before]  # what that run covered (it may have had --limit)
        for m, _ in ms:
            if before[m.id]["status"] != "survived":
                m.status, m.killed_by, m.seconds = before[m.id]["status"], before[m.id]["killed_by"], 0.0
    if limit:
        ms = ms[:limit]
    log, mlog = logs / f"{name}.log", logs / f"{name}.mutant.log"
    _write(target, base)  # the unparsed original must pass, or no mutant tells anything
    status, base_s = _run_tests(tree, tests, 900, log)
    if status != "passed":  # no mutant would tell anything: the module is reported unscored, the run goes on
        _write(target, original)
        print(f"{name}: NOT SCORED: the selected tests fail on the unmutated module; see {log}", flush=True)
        return {"name": name, "module": t.file, "functions": t.functions, "tests": tests,
                "error": f"the selected tests fail on the unmutated module (see {log})"}
    # Generous: the unmutated run was timed under the same load, a mutant's tests usually stop at their first
    # failure, and a timeout is retried once at twice this; what times out twice loops (or nearly so).
    timeout = 5 * base_s + 10
    todo = sum(not m.status for m, _ in ms)
    print(f"{name}: {len(ms)} mutants ({todo} to run), tests {' '.join(tests)} ({base_s:.1f} s unmutated, "
          f"timeout {timeout:.0f} s)", flush=True)
    t0 = time.monotonic()
    try:
        for m, src in ms:
            if m.status:  # killed in the earlier run
                continue
            _write(target, src)
            status, m.seconds = _run_tests(tree, tests, timeout, mlog)
            if status == "timeout":  # maybe only the machine was busy: once more, with twice the time
                m.retried = True
                status, m.seconds = _run_tests(tree, tests, 2 * timeout, mlog)
            m.status = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[status]
            if m.status == "killed":
                m.killed_by = _killed_by(mlog)
            if m.status == "survived":
                print(f"  survived #{m.id} line {m.line}: {m.kind}: {m.original}  =>  {m.mutated}", flush=True)
    finally:
        _write(target, original)
    killed = sum(m.status in ("killed", "timeout") for m, _ in ms)
    return {
        "name": name, "module": t.file, "functions": t.functions, "tests": tests, "source_sha256": src_hash,
        "unmutated_tests_s": round(base_s, 2), "timeout_s": round(timeout, 1), "mutants": len(ms), "killed": killed,
        "timeouts": sum(m.status == "timeout" for m, _ in ms), "survived": len(ms) - killed,
        "score": round(killed / max(len(ms), 1), 4), "seconds": round(time.monotonic() - t0, 1),
        "survivors": [{**asdict(m), "diff": "".join(difflib.unified_diff(
            base.splitlines(True), src.splitlines(True), t.file, t.file, n=1))} for m, src in ms if m.status == "survived"],
        "results": [asdict(m) for m, _ in ms],
    }


def _git(*args) -> str:
    r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def summary(res: dict) -> str:
    """The score table and every survivor, as Markdown (printed at the end of a run; `--show FILE`)."""
    mods = [r for r in res["modules"] if "error" not in r]
    lines = ["| module | mutants | killed (timeouts) | survived | score | s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['module']} | not scored: {r['error']} |||||" for r in res["modules"] if "error" in r]
    lines += [f"| {r['module']}{' (' + ', '.join(r['functions']) + ')' if r['functions'] else ''} | {r['mutants']} | "
              f"{r['killed']} ({r['timeouts']}) | {r['survived']} | {r['score']:.1%} | {r['seconds']:.0f} |" for r in mods]
    t = res["total"]
    lines.append(f"| **total** | **{t['mutants']}** | **{t['killed']}** | **{t['survived']}** | **{t['score']:.1%}** | "
                 f"**{res['seconds']:.0f}** |")
    lines += ["", "| module | # | line | mutation | original | mutant |", "|---|---|---|---|---|---|"]
    for r in mods:
        for m in r["survivors"]:
            cells = [r["name"], m["id"], m["line"], m["kind"], f"`{m['original']}`", f"`{m['mutated']}`"]
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    ap.add_argument("--out", help=f"the results file (default {DEFAULT_OUT.relative_to(ROOT)}; with --rerun, "
                                  "the rerun file's name with .rerun before its suffix)")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--show", metavar="FILE", help="print the scores and survivors of a results file and exit")
    ap.add_argument("--limit", type=int, help="at most this many mutants per module (a smoke run)")
    ap.add_argument("--tests", nargs="+", help="run these tests instead of the module's selection (one module)")
    ap.add_argument("--rerun", metavar="FILE", help="an earlier results file: run only its survivors (its killed "
                                                    "mutants count as killed)")
    args = ap.parse_args(argv)
    if args.show:
        print(summary(json.loads(Path(args.show).read_text())))
        return 0
    previous = json.loads(Path(args.rerun).read_text()) if args.rerun else None
    mods = args.modules or ([r["name"] for r in previous["modules"]] if previous else list(MODULES))
    if set(mods) - set(MODULES):
        ap.error(f"unknown module(s) {sorted(set(mods) - set(MODULES))}; choose from {list(MODULES)}")
    if args.tests and len(mods) != 1:
        ap.error("--tests needs exactly one module")
    if args.list:
        for name in mods:
            for m, _ in mutants(ROOT / MODULES[name].file, MODULES[name].functions)[1]:
                print(f"{name} #{m.id} line {m.line}: {m.kind}: {m.original}  =>  {m.mutated}")
        return 0
    if previous:
        earlier = {r["name"]: r for r in previous["modules"]}
        if set(mods) - set(earlier):
            ap.error(f"{args.rerun} has no results for {sorted(set(mods) - set(earlier))}")
        out = Path(args.out) if args.out else Path(args.rerun).with_suffix(".rerun.json")
    else:
        earlier, out = {}, Path(args.out) if args.out else DEFAULT_OUT
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"mutate: results go to {out}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `kill` cleans up as Ctrl-C does
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # import the heavy dependencies once; every forked child inherits them (unitok itself is not imported
    # here: each child imports it from the scratch copy, mutant included)
    import hypothesis  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch

    torch.set_num_threads(1)
    import vector_quantize_pytorch  # noqa: F401

    for ep in entry_points(group="pytest11"):  # pytest's plugins (anyio's takes ~1 s to import)
        ep.load()
    gc.freeze()  # the children's collections (pytest runs two at exit) then skip the inherited heap: ~1 s each

    res = {"command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
           "commit": _git("rev-parse", "HEAD"), "uncommitted_changes": bool(_git("status", "--porcelain")),
           "rerun_of": str(Path(args.rerun).resolve()) if args.rerun else None,
           "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
                       "torch": torch.__version__, "vector-quantize-pytorch": version("vector-quantize-pytorch"),
                       "nice": os.nice(0)},
           "complete": False, "modules": []}
    t0 = time.monotonic()

    def write():  # after every module, so an interrupted run leaves what it finished
        done = [r for r in res["modules"] if "error" not in r]
        n, k = sum(r["mutants"] for r in done), sum(r["killed"] for r in done)
        res.update(seconds=round(time.monotonic() - t0, 1), total={"mutants": n, "killed": k, "survived": n - k,
                                                                   "score": round(k / max(n, 1), 4)})
        res["machine"]["load_average_at_end"] = os.getloadavg()
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        os.replace(tmp, out)

    logs = out.with_suffix(".logs")  # pytest's output of each module's unmutated run and of its last mutant
    logs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="unitok-mutate-") as tree:
        tree = Path(tree)
        _copy_tree(tree)
        os.environ["PYTHONPATH"] = str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")
        for name in mods:
            r = run_module(name, tree, logs, args.limit, args.tests, earlier.get(name))
            res["modules"].append(r)
            write()
            if "error" not in r:
                print(f"{name}: {r['killed']}/{r['mutants']} = {r['score']:.1%} killed ({r['seconds']:.0f} s)", flush=True)
    res["complete"] = True
    write()
    print(summary(res))
    print(f"mutate: {res['total']['score']:.1%} killed in {res['seconds']:.0f} s; results in {out}", flush=True)
    gc.unfreeze()  # what was frozen is freed at exit as usual (else extension modules report it as leaked)
    return 1 if any("error" in r for r in res["modules"]) else 0


if __name__ == "__main__":
    sys.exit(main())
