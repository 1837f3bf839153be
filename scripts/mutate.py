"""Mutation testing for the modules whose bugs the tests must catch (`make mutate`, not part of `make test`).

    .venv/bin/python scripts/mutate.py                 # every module below, one worker
    .venv/bin/python scripts/mutate.py vocab quantizers # some of them
    .venv/bin/python scripts/mutate.py --list vocab     # print the mutants, run nothing

A small mutator of our own, built on `ast` (no extra package; works offline): each mutant changes one
place of one module (operator swap, comparison flip, `and`/`or`, dropped `not`, negated `if`/`while`
condition, integer +/-1, True/False swap, `return x` -> `return None`, a call statement -> `pass`).
Strings and docstrings are not mutated (messages would only give noise). The repository is copied once
to a scratch directory; for each mutant the mutated source is written there and a child forked from a
worker that has already imported torch runs only that module's selected tests (`pytest -x -q`) with a
timeout. A mutant is killed when a test fails (or times out), survived when the tests pass.

Output: per-module score on stdout; runs/mutation/<module>.json (every mutant and its result) and
runs/mutation/survivors.md (the survivors as a table with the unified diff of each). See docs/mutation.md.
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> (file, tests, only these top-level functions / Class.method names (None = all))
MODULES: dict[str, tuple[str, list[str], list[str] | None]] = {
    "vocab": ("unitok/vocab.py", ["tests/test_vocab.py"], None),
    "checkpoint": ("unitok/checkpoint.py", [
        "tests/test_checkpoint.py",
        "tests/test_lm_training.py::test_load_model_errors",
        "tests/test_lm_training.py::test_checkpoint_trained_with_triton_kernels_loads_with_auto_backends",
    ], None),
    "quantizers": ("unitok/tokenizers/quantizers.py", ["tests/test_quantizers.py"], None),
    # the resume logic of the engine that is pure functions; Engine.restore/_check_resume are covered by
    # tests/test_engine.py (kill -9 + resume), too slow (~1 min a run) to rerun per mutant
    "loop": ("unitok/training/loop.py", ["tests/test_checkpoint.py"], ["lr_factor", "recipe_diff"]),
}

BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
              ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
              ast.LShift: ast.RShift, ast.RShift: ast.LShift}
CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


@dataclass
class Mutant:
    id: int
    line: int
    kind: str
    original: str
    mutated: str
    status: str = ""  # killed | survived | timeout
    killed_by: str = ""  # the first test that failed on it
    seconds: float = 0.0


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
    src = path.read_text()
    tree = ast.parse(src)
    base = ast.unparse(tree)
    skip, inside = _skip_nodes(tree, only)
    out = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip or (inside is not None and id(node) not in inside):
            continue
        for which, (desc, _) in enumerate(_mutations(node)):
            new = ast.unparse(_apply(tree, index, which))
            if new == base:
                continue
            a, b = base.splitlines(), new.splitlines()
            sm = difflib.SequenceMatcher(None, a, b)
            ch = [op for op in sm.get_opcodes() if op[0] != "equal"]
            orig = " / ".join(a[ch[0][1]:ch[0][2]]).strip() if ch else ""
            mut = " / ".join(b[ch[0][3]:ch[0][4]]).strip() if ch else ""
            m = Mutant(len(out), getattr(node, "lineno", 0), desc, orig[:200], mut[:200])
            out.append((m, new))
    return base, out


# ------------------------------------------------------------------ running
def _copy_tree(dst: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", ".git", "runs", "mutants", "__pycache__", ".pytest_cache",
                                    ".hypothesis", "*.egg-info", "out", "build")
    for name in os.listdir(ROOT):
        s = ROOT / name
        if name in (".venv", ".git", "runs", "mutants", "out", "build") or name.endswith(".egg-info"):
            continue
        if s.is_dir():
            shutil.copytree(s, dst / name, ignore=ignore)
        elif s.is_file():
            shutil.copy2(s, dst / name)


def _run_tests(tree: Path, tests: list[str], timeout: float, log: Path) -> tuple[str, float]:
    """Fork a child that runs pytest on `tests` in `tree`; 'passed' | 'failed' | 'timeout'."""
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(tree)
            sys.path.insert(0, str(tree))
            sys.dont_write_bytecode = True
            import pytest
            from hypothesis import Phase, settings

            # no shrinking: a failing example kills the mutant, its minimal form does not matter here
            settings.register_profile("mutate", phases=[Phase.explicit, Phase.reuse, Phase.generate], deadline=None)
            settings.load_profile("mutate")
            rc = pytest.main([*tests, "-x", "-q", "-rfE", "-p", "no:cacheprovider", "-W", "ignore"])
            os._exit(int(rc))
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            os._exit(99)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            rc = os.waitstatus_to_exitcode(status)
            return ("passed" if rc == 0 else "failed"), time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - t0
        time.sleep(0.02)


def run_module(name: str, tree: Path, out: Path, limit: int | None, tests: list[str] | None = None,
               rerun: Path | None = None) -> dict:
    rel, default_tests, only = MODULES[name]
    tests = tests or default_tests
    target = tree / rel
    original = target.read_text()
    base, ms = mutants(ROOT / rel, only)
    src_hash = hashlib.sha256(base.encode()).hexdigest()[:16]
    previous = {}
    if rerun is not None:  # only the survivors of an earlier run; its killed mutants stay killed
        prev = json.loads((rerun / f"{name}.json").read_text())
        if prev.get("source_sha256") != src_hash:
            raise SystemExit(f"{name}: {rel} changed since {rerun}; rerun everything instead")
        previous = {m["id"]: m["status"] for m in prev["results"]}
        for m, _ in ms:
            m.status = previous[m.id] if previous[m.id] != "survived" else ""
    if limit:
        ms = ms[:limit]
    log = out / f"{name}.log"
    pyc = target.parent / "__pycache__"
    shutil.rmtree(pyc, ignore_errors=True)
    target.write_text(base)  # the unparsed original must pass, or no mutant tells anything
    status, base_s = _run_tests(tree, tests, 600, log)
    if status != "passed":
        target.write_text(original)
        raise SystemExit(f"{name}: the selected tests fail on the unmutated module; see {log}")
    timeout = max(10.0, 3 * base_s + 5)
    todo = sum(not m.status for m, _ in ms)
    print(f"{name}: {len(ms)} mutants ({todo} to run), tests {' '.join(tests)} ({base_s:.1f} s unmutated, timeout {timeout:.0f} s)",
          flush=True)
    t0 = time.monotonic()
    try:
        for m, src in ms:
            if m.status:  # killed in the earlier run
                continue
            target.write_text(src)
            status, m.seconds = _run_tests(tree, tests, timeout, out / f"{name}.mutant.log")
            m.status = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[status]
            if m.status == "killed":  # the first failing test (pytest -x stops there)
                failed = re.search(r"^(?:FAILED|ERROR) (\S+)", (out / f"{name}.mutant.log").read_text(errors="replace"),
                                   re.M)
                m.killed_by = failed.group(1) if failed else "?"
            if m.status == "survived":
                print(f"  survived #{m.id} line {m.line}: {m.kind}: {m.original}  =>  {m.mutated}", flush=True)
    finally:
        target.write_text(original)
    killed = sum(m.status in ("killed", "timeout") for m, _ in ms)
    res = {"module": rel, "source_sha256": src_hash, "rerun_of": str(rerun) if rerun else None, "tests": tests, "functions": only, "mutants": len(ms), "killed": killed,
           "survived": len(ms) - killed, "score": killed / max(len(ms), 1), "seconds": time.monotonic() - t0,
           "results": [asdict(m) for m, _ in ms]}
    survivors = [(m, src) for m, src in ms if m.status == "survived"]
    res["diffs"] = {m.id: "".join(difflib.unified_diff(base.splitlines(True), src.splitlines(True), rel, rel, n=1))
                    for m, src in survivors}
    (out / f"{name}.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"{name}: score {killed}/{len(ms)} = {res['score']:.1%} ({res['seconds']:.0f} s)", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"some of {', '.join(MODULES)} (default: all)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "mutation"))
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--limit", type=int, help="at most this many mutants per module (a smoke run)")
    ap.add_argument("--tests", nargs="+", help="run these tests instead of the module's selection (one module)")
    ap.add_argument("--rerun", help="a previous --out: run only its survivors, count its killed mutants as killed")
    args = ap.parse_args(argv)
    mods = args.modules or list(MODULES)
    if args.tests and len(mods) != 1:
        ap.error("--tests needs exactly one module")
    if set(mods) - set(MODULES):
        ap.error(f"unknown module(s) {sorted(set(mods) - set(MODULES))}; choose from {list(MODULES)}")
    if args.list:
        for name in mods:
            rel, _, only = MODULES[name]
            for m, _ in mutants(ROOT / rel, only)[1]:
                print(f"{name} #{m.id} line {m.line}: {m.kind}: {m.original}  =>  {m.mutated}")
        return 0
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # import the heavy dependencies once; every forked child inherits them (unitok itself is not imported
    # here: each child imports it from the scratch copy, mutant included)
    import hypothesis  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch

    torch.set_num_threads(1)
    import vector_quantize_pytorch  # noqa: F401

    t0 = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="unitok-mutate-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        os.environ["PYTHONPATH"] = str(tree) + os.pathsep + os.environ.get("PYTHONPATH", "")
        for name in mods:
            results.append(run_module(name, tree, out, args.limit, args.tests,
                                      Path(args.rerun) if args.rerun else None))
    total = time.monotonic() - t0
    # the summary covers every module result in --out (earlier invocations included)
    results = {r["module"]: r for r in results}
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        results.setdefault(r["module"], r)
    results = list(results.values())
    lines = ["| module | mutants | killed | survived | score | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['score']:.1%} | "
              f"{r['seconds']:.0f} |" for r in results]
    surv = ["", "| module | # | line | mutation | original | mutant |", "|---|---|---|---|---|---|"]
    for r in results:
        for m in r["results"]:
            if m["status"] == "survived":
                cells = [r["module"], m["id"], m["line"], m["kind"], f"`{m['original']}`", f"`{m['mutated']}`"]
                surv.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    diffs = ["", "## Diffs", ""] + [f"```diff\n{d}```" for r in results for d in r["diffs"].values()]
    (out / "survivors.md").write_text("\n".join(lines + surv + diffs) + "\n")
    print("\n".join(lines))
    print(f"total {total:.0f} s; survivors in {out / 'survivors.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
