"""The layers: ``challenge_kit.core`` at the bottom, ``evaluator`` on it, the parts, the kit, and the command line
(``challenge_kit.cli`` and ``python -m challenge_kit``) on top; imports run down, deferred and TYPE_CHECKING ones too.

``python tests/project/test_layers.py`` prints the import graph by layer (every module, what it imports of the project).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("challenge_kit", "evaluator")
LAYERS = ("core", "evaluator", "parts", "kit", "cli")  # bottom first


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer(module: str) -> str:
    if within(module, "challenge_kit.core"):
        return "core"
    if within(module, "evaluator"):
        return "evaluator"
    if within(module, "challenge_kit.parts"):
        return "parts"
    if within(module, "challenge_kit.cli") or module == "challenge_kit.__main__":
        return "cli"
    return "kit"


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports, anywhere in it: every import statement the parser sees, those inside
    functions and under ``if TYPE_CHECKING`` included, relative ones resolved."""
    found: set[str] = set()
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*package[:len(package) - node.level + 1], *([node.module] if node.module else [])]) \
                if node.level else node.module
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def graph() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports (names that are modules or packages)."""
    files = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    edges = {m: {n for n in project_imports(p) if n in files and n != m} for m, p in files.items()}
    # ``from pkg import module`` names the module; the package itself is only an edge when nothing below it is
    return {m: {n for n in found if not any(o.startswith(n + ".") for o in found)} for m, found in edges.items()}


def upward(edges: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [f"{a} ({layer(a)}) -> {b} ({layer(b)})" for a, targets in sorted(edges.items()) for b in sorted(targets)
            if rank[layer(b)] > rank[layer(a)]]


def test_no_import_runs_up_a_layer():
    edges = graph()
    assert {layer(m) for m in edges} == set(LAYERS)
    assert upward(edges) == []


def test_the_scorer_imports_and_runs_with_the_kit_above_it_unimportable():
    """Every kit module outside ``core`` is made unimportable; the scorer and its command line still load."""
    code = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("challenge_kit.") and not name.startswith("challenge_kit.core"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import evaluator, evaluator.evaluate, evaluator.scorer
try:
    evaluator.evaluate.main(["--help"])
except SystemExit as e:
    assert e.code == 0
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "blocked" not in result.stderr, result.stderr
    assert "usage:" in result.stdout, result.stderr


def main() -> None:
    edges = graph()
    for name in LAYERS[::-1]:
        print(f"== {name}")
        for module in sorted(m for m in edges if layer(m) == name):
            below = sorted(edges[module])
            print(f"  {module} -> {', '.join(below) if below else '(nothing of the project)'}")
    bad = upward(edges)
    print("upward imports: " + ("none" if not bad else "; ".join(bad)))


if __name__ == "__main__":
    main()
