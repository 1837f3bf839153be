"""The import graph of unitok/: the floors stay in order and no module reaches for another's private names.

Every import of every module counts, those inside functions included, and so does a string that names a
unitok module or a `module:function` handler (a handler dispatched through importlib is an import that runs
later). Floors, top down: the applications (`unitok/apps/`, and the command line, which names handlers on
every floor), then training and generation (`unitok/bench/`, the measuring library, beside training), then
data, the model, the tokenizers and the vocabulary.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMED = re.compile(r"unitok(\.\w+)+(:\w+)?")  # "unitok.x.y" or "unitok.x.y:func"
TOP = ("unitok.apps", "unitok.cli")
LIBRARY_BELOW_TRAINING = ("unitok.model", "unitok.tokenizers", "unitok.data", "unitok.generation", "unitok.vocab")


def _modules(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for unitok/ under root (a package is its __init__.py)."""
    out = {}
    for f in sorted((root / "unitok").rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[int, str]]:
    """(line, dotted target) for every import in `source`: `import a.b` -> a.b, `from a import b` -> a.b
    (relative ones resolved), a string naming a unitok module or handler, and an attribute read through
    an imported unitok module (`import unitok.x as m; m._y` -> unitok.x._y)."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                found.append((node.lineno, a.name))
                top = a.name.partition(".")[0]  # `import a.b` binds a; `import a.b as m` binds m to a.b
                aliases[a.asname or top] = a.name if a.asname else top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from ..x import y` in package p.q: p.x.y
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                target = base if a.name == "*" else f"{base}.{a.name}"
                found.append((node.lineno, target))
                if target in known:
                    aliases[a.asname or a.name] = target
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and NAMED.fullmatch(node.value):
            found.append((node.lineno, node.value.replace(":", ".")))
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # a.b of a.b.c: seen with a.b.c
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain, v = [node.attr], node.value
            while isinstance(v, ast.Attribute):
                chain.append(v.attr)
                v = v.value
            if isinstance(v, ast.Name) and v.id in aliases:
                dotted = ".".join([aliases[v.id], *reversed(chain)])
                if dotted.startswith("unitok."):
                    found.append((node.lineno, dotted))
    return sorted(set(found))


def graph(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """(file:line, importer, target) for every unitok target imported by a module of unitok/ under root."""
    mods = _modules(root)
    edges = []
    for name, f in mods.items():
        for line, target in imports(f.read_text(), name, f.name == "__init__.py", set(mods)):
            if target == "unitok" or target.startswith("unitok."):
                edges.append((f"{f.relative_to(root)}:{line}", name, target))
    return edges


def within(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def private_owner(target: str) -> str | None:
    """The module or package a private name of `target` belongs to (unitok.x for unitok.x._y), or None."""
    parts = target.split(".")
    for k, p in enumerate(parts[1:], 1):
        if p.startswith("_") and not (p.startswith("__") and p.endswith("__")):
            return ".".join(parts[:k])
    return None


EDGES = graph()


def _report(bad: list[tuple[str, str, str]]) -> str:
    return "\n" + "\n".join(f"{where} imports {target}" for where, _, target in bad)


def test_the_graph_sees_every_kind_of_import():
    src = '''
import unitok.bench.kernels as bk
from unitok import reporting
from . import sibling


def f():
    from unitok.training.loop import _b64
    from .media import read_video
    bk._maxdiff(1, 2)
    reporting._private
    return {"x": "unitok.apps.demo:run", "prose": "see unitok.vocab for the layout"}
'''
    found = imports(src, "unitok.data.thing", False, {"unitok.bench.kernels", "unitok.reporting"})
    assert found == [(2, "unitok.bench.kernels"), (3, "unitok.reporting"), (4, "unitok.data.sibling"),
                     (8, "unitok.training.loop._b64"), (9, "unitok.data.media.read_video"),
                     (10, "unitok.bench.kernels._maxdiff"), (11, "unitok.reporting._private"),
                     (12, "unitok.apps.demo.run")], found
    assert [private_owner(t) for t in ("unitok.training.loop._b64", "unitok.kernels._triton.triton", "unitok.__version__",
                                       "unitok.data.media")] == ["unitok.training.loop", "unitok.kernels", None, None]
    # the real graph: a function-level import (unitok/apps/demo.py trains through training.unified)
    assert any(where.startswith("unitok/apps/demo.py") and within(t, "unitok.training.unified") for where, _, t in EDGES)


def test_nothing_below_the_application_floor_imports_it():
    bad = [e for e in EDGES if not within(e[1], *TOP) and within(e[2], "unitok.apps")]
    assert not bad, "modules below unitok/apps/ import it:" + _report(bad)


def test_training_imports_neither_benchmarks_nor_applications():
    bad = [e for e in EDGES if within(e[1], "unitok.training") and within(e[2], "unitok.bench", *TOP)]
    assert not bad, "unitok/training/ imports a benchmark or an application:" + _report(bad)


def test_data_imports_nothing_from_generation():
    bad = [e for e in EDGES if within(e[1], "unitok.data") and within(e[2], "unitok.generation")]
    assert not bad, "unitok/data/ imports unitok/generation/:" + _report(bad)


def test_the_library_below_training_imports_nothing_from_it():
    bad = [e for e in EDGES if within(e[1], *LIBRARY_BELOW_TRAINING) and within(e[2], "unitok.training")]
    assert not bad, "model/, tokenizers/, data/, generation/ or vocab.py import unitok/training/:" + _report(bad)


def test_no_module_imports_another_modules_private_names():
    bad = [e for e in EDGES if (owner := private_owner(e[2])) and not within(e[1], owner)]
    assert not bad, "private names imported from another module (make them public or keep them at home):" + _report(bad)
