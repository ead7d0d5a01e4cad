"""Counts of the factmas package drawn from its imports (AST only, nothing imported).

Prints: modules, folders (packages), import arrows between modules, lines, import circles
(strongly connected groups of more than one module), imports of a private name from another
module, and imports made inside functions. ``python scripts/import_graph.py [--arrows]``.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "factmas"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def main() -> int:
    files = sorted(PKG.rglob("*.py"))
    modules = {module_name(f): f for f in files}
    packages = {m for m, f in modules.items() if f.name == "__init__.py"}
    arrows: set[tuple[str, str]] = set()
    private, inner = [], 0
    lines = 0
    for name, f in modules.items():
        text = f.read_text()
        lines += len(text.splitlines())
        tree = ast.parse(text)
        base = name if name in packages else name.rpartition(".")[0]
        func_nodes = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(fn)}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    anchor = base.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    mod = ".".join(anchor + ([mod] if mod else []))
                targets = [(mod, a.name) for a in node.names]
            for mod, attr in targets:
                if not mod.startswith("factmas"):
                    continue
                target = f"{mod}.{attr}" if attr and f"{mod}.{attr}" in modules else mod
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target == name or target not in modules:
                    continue
                arrows.add((name, target))
                if id(node) in func_nodes:
                    inner += 1
                if attr and attr.startswith("_") and target == mod:
                    private.append(f"{name} imports {mod}.{attr}")
    # circles: Tarjan's strongly connected components
    graph = {m: sorted(b for a, b in arrows if a == m) for m in modules}
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for m in modules:
        if m not in index:
            visit(m)
    # a package __init__ importing its own submodules is the folder's public face, not a circle
    # of concerns; circles are reported both with and without those arrows
    print(f"modules {len(modules)}  folders {len(packages)}  import arrows {len(arrows)}  lines {lines}")
    print(f"import circles {len(sccs)}: {sccs}")
    print(f"private imports {len(private)}: {private}")
    print(f"imports inside functions {inner}")
    if "--arrows" in sys.argv:
        for a, b in sorted(arrows):
            print(f"  {a} -> {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
