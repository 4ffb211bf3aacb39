"""bench/mutation.py's data stays true to the tree (no mutation tool needed): every module and test file it names
exists, every listed equivalent mutant still matches the source, and lifting a decorator keeps what it binds."""

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "mutation.py"
spec = importlib.util.spec_from_file_location("mutation_bench", SCRIPT)
bench = sys.modules["mutation_bench"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(bench)


def test_every_module_and_test_file_exists():
    for target in bench.TARGETS:
        assert (ROOT / target.path).exists(), target.path
        assert target.tests and all((ROOT / t).is_file() for t in target.tests), target


def test_every_listed_equivalent_still_matches_its_function():
    entries = bench.load_equivalents()
    assert entries
    for e in entries:
        assert any(e["file"].startswith(t.path) for t in bench.TARGETS), e["file"]
        source = (ROOT / e["file"]).read_text()
        name = e["function"].split(".")[-1]
        functions = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef) and n.name == name]
        assert functions, f"{e['file']} has no function {e['function']}: remove or update its equivalent"
        body = "\n".join(line.strip() for f in functions for line in ast.get_source_segment(source, f).splitlines())
        for line in e["before"].splitlines():
            assert line in body, f"{e['file']}: {e['function']} no longer has {line!r}: remove or update the entry"


def test_lifting_a_decorator_binds_the_same_thing():
    source = textwrap.dedent("""
        import torch


        class Box:
            def __init__(self, side):
                self.side = side

            @property
            def area(self):
                return self.side * self.side

            @staticmethod
            def unit():
                return Box(1)


        @torch.no_grad()
        def doubled(x):
            return x * 2
    """)
    lifted = bench.lift_decorators(source)
    assert "@property" not in lifted and "@torch.no_grad()" not in lifted and "@staticmethod" in lifted
    for code in (source, lifted):
        space = {}
        exec(compile(code, "<module>", "exec"), space)
        assert isinstance(space["Box"].__dict__["area"], property) and space["Box"](3).area == 9
        assert space["Box"].unit().area == 1
        out = space["doubled"](torch.ones(2, requires_grad=True))
        assert out.tolist() == [2.0, 2.0] and not out.requires_grad


def test_an_unknown_module_is_one_line_before_any_work():
    done = subprocess.run([sys.executable, SCRIPT, "--module", "nonesuch"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: --module: 'nonesuch' names 0 modules; one of evaluator/scorer.py")


def test_cuda_only_entries_are_device_moves_and_leave_the_percentage():
    moves = [e for e in bench.load_equivalents() if e["kind"] == "cuda_only"]
    for e in moves:  # the category holds placements only: a mutant that changes a value is no device move
        assert "device" in e["before"] + e["after"] or ".to(" in e["before"], e
    row = bench.Row("m.py", [], mutants=10, killed=6, survived=1, equivalent=1, cuda_only=2)
    assert row.percent == 100.0 * 6 / 7  # of the 7 this machine can tell apart


def test_old_pytest_sessions_are_pruned_and_the_newest_kept(tmp_path):
    root = tmp_path / "pytest-of-someone"
    for n in (1, 2, 10, 11):
        (root / f"pytest-{n}" / "case").mkdir(parents=True)
    (root / "pytest-current").symlink_to(root / "pytest-11")
    bench.prune_sessions(tmp_path, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["pytest-10", "pytest-11", "pytest-current"]
