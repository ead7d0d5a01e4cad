"""The packages' "May import:" docstrings as checked rules, and no import circle (issue 29).

Each folder of ``factmas/`` says in its ``__init__`` docstring what it may import ("May import:
``factmas.x``, ``factmas.y`` ... Never ..."). This test reads those sentences and every module's
imports (AST only, the ones inside functions included, nothing is imported) and fails on an import
the folder's sentence does not allow, on a folder without the sentence, on an import of
``factmas.cli`` or ``factmas.api`` from the library, and on an import circle between modules.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "factmas"
FOLDERS = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file())
FREE = {"cli"}                 # the command lines may import anything; nothing imports them


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The factmas modules (and ``module.name`` for from-imports) that ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = module_name(path)
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")[:len(base.split(".")) - (node.level - 1)]
                mod = ".".join(parts + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m == "factmas" or m.startswith("factmas.")}


def contract(folder: str) -> set[str] | None:
    """The allowed targets of ``folder`` (None: "every library package"); raises when it has none."""
    doc = ast.get_docstring(ast.parse((PKG / folder / "__init__.py").read_text(encoding="utf-8"))) or ""
    m = re.search(r"May import:(.*?)(?:\bNever\b|\Z)", doc, re.S)
    if m is None:
        raise AssertionError(f"factmas/{folder}/__init__.py: its docstring has no 'May import:' sentence")
    text = m.group(1)
    if "every library package" in text:
        return None
    return {n if n.startswith("factmas") else f"factmas.{n}"
            for n in re.findall(r"``((?:factmas\.)?\w+(?:\.\w+)*)``", text)}


def allowed(target: str, rule: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in rule)


@pytest.mark.parametrize("folder", [f for f in FOLDERS if f not in FREE])
def test_folder_imports_only_what_its_docstring_allows(folder):
    rule = contract(folder)
    broken = []
    for f in sorted((PKG / folder).rglob("*.py")):
        for target in sorted(imports(f)):
            if target == "factmas" or allowed(target, {f"factmas.{folder}"}):
                continue
            if rule is None:
                ok = not allowed(target, {"factmas.cli"})
            else:
                ok = allowed(target, rule)
            if not ok:
                broken.append(f"{f.relative_to(ROOT)} imports {target}")
    assert not broken, f"factmas/{folder}/__init__.py's 'May import:' does not allow:\n" + "\n".join(broken)


def test_the_library_never_imports_the_commands_or_the_api():
    broken = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG)
        if rel.parts[0] in ("cli", "api") or rel.as_posix() in ("__init__.py", "__main__.py"):
            continue
        broken += [f"{f.relative_to(ROOT)} imports {t}" for t in imports(f)
                   if allowed(t, {"factmas.cli", "factmas.api"})]
    assert not broken, "\n".join(broken)


def test_no_import_circle_between_modules():
    files = {module_name(f): f for f in PKG.rglob("*.py")}
    graph = {m: {t if t in files else t.rpartition(".")[0] for t in imports(f)} & set(files) - {m}
             for m, f in files.items()}
    # a package's __init__ re-exporting its own modules is no circle: drop arrows into a package
    # from its own modules
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):                      # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_checker_sees_a_broken_rule(tmp_path):
    """The rule parser and the import reader on a made-up folder: an import outside its sentence is
    found (the check cannot pass vacuously)."""
    doc = '"""X.\n\nMay import: ``factmas.config``. Never ``factmas.cli``.\n"""\n'
    rule = {n for n in re.findall(r"``((?:factmas\.)?\w+(?:\.\w+)*)``",
                                  re.search(r"May import:(.*?)(?:\bNever\b|\Z)", doc, re.S).group(1))}
    assert rule == {"factmas.config"}
    fake = tmp_path / "mod.py"
    fake.write_text("from factmas.trainer import train\nimport factmas.config\n", encoding="utf-8")
    got = {t for t in ast_imports_of(fake)}
    assert "factmas.trainer" in got and not allowed("factmas.trainer", rule) and allowed("factmas.config", rule)


def ast_imports_of(path: Path) -> set[str]:
    """``imports`` for a file outside the package (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module or "")
    return out
