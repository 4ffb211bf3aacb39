"""Mutation testing of the critical modules, each against its own tests: the one-line bugs the suite lets through.

A mutation tool changes one thing at a time in a module (an operator, a number, a call's argument, a returned
value) and runs the tests that reach the changed function. A change that no test fails on (a survivor) is a bug
the suite would let through, unless it changes nothing a caller can observe: such equivalent mutants are listed,
each with its reason, in ``bench/mutation_equivalents.toml`` (keyed by file, function and changed lines, which do
not move when mutmut renumbers), so that a rerun reports them as equivalent and not as survivors. The same file
lists, as ``[[cuda_only]]``, mutants that only move a tensor, a network or a generator to another device (or leave
it where it is): on a CPU-only machine the run is the same, on CUDA the first mixed-device operation fails (the
CUDA cases of ``tests/core/test_device.py``). They are counted in their own column, not as killed and not as
equivalent, and the percentage is of the mutants this machine can tell apart.

The tool is mutmut 3 (``pip install -e ".[mutation]"``), not cosmic-ray. mutmut writes every mutant of a module
into one copy of it behind a switch, forks each run from a process that has already imported torch and the tests,
and runs only the tests that reached the mutated function, so a mutant costs seconds on 2 cores; cosmic-ray starts
a fresh test command per mutant (importing torch alone takes seconds) and runs every selected test each time.
What mutmut leaves alone: code outside functions (module constants such as ``contract.py``'s EPOCHS and LR,
dataclass fields and their defaults), which tests pin instead by stating them as facts; and decorated functions.
Of those, this bench lifts the decorators in ``LIFTED`` in its copy (``def f(...)`` then ``f = property(f)``: the
same object under the same name) so that mutmut reaches them.

Each module runs in a copy of the checkout (its tracked and untracked files, not the ignored ones) in a temporary
folder, where mutmut writes its ``mutants/``; nothing is written into the checkout, and nothing needs the network.
Runs are ``nice -n 10``, ``--jobs`` forks at a time, one torch thread each. Tests that spawn ranks (gloo, in
``tests/core/test_parallel.py``) stay out of every selection: under mutmut they failed for a mutant that changes
nothing on a CPU (in a run whose pruning still removed running forks' folders; not retried since), so what only
two ranks show is checked by applying the mutant by hand and running those tests.
One file of some 370 lines: the copy, the lifted decorators, the runs and the equivalents all serve one
measured run, and a reader holds them together.

    python bench/mutation.py                                   # every module, one after the other
    python bench/mutation.py --module contract --json mutation.json
    python bench/mutation.py --module evaluator/scorer.py --keep   # keep the copy: `mutmut browse` in it
    python bench/mutation.py --minutes 10                      # each module cut after 10 min (a busy machine)
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "bench" / "mutation_equivalents.toml"
SOURCES = ("challenge_kit", "evaluator")  # the packages copied into mutants/ (only the target is mutated)
KINDS = ("equivalent", "cuda_only")  # the tables of the equivalents file
LIFTED = ("property", "torch.no_grad()")  # decorators rewritten as a call after the def, so mutmut mutates the body


@dataclass(frozen=True)
class Target:
    """A module (a file, or a package's folder ending in /) and the test files that exercise it, narrowed to the
    tests a ``-k`` expression selects where a whole file is too slow for 2 cores."""

    path: str
    tests: tuple[str, ...]
    keyword: str = ""

    def selection(self) -> list[str]:
        """The pytest arguments that select the tests."""
        return [*self.tests, *(["-k", self.keyword] if self.keyword else [])]


# Each module against its own tests: the files that call it on purpose, not every test that passes through it.
TARGETS = (
    # the recipe's and the official loop's tests, not the command line's (evaluate.py's), which train rounds too
    Target("evaluator/scorer.py", ("tests/evaluator/test_evaluator.py", "tests/evaluator/test_scorer_fidelity.py",
                                   "tests/evaluator/test_scorer_reference.py"),
           "not invocations and not says_what_verify and not ddkit_evaluate and not python_m and not scored_folder"),
    # fast.py's tests without the many-round real-image comparison, and the stacked rounds against the official ones
    Target("evaluator/fast.py", ("tests/evaluator/test_fast_scorer.py", "tests/evaluator/test_scorer_reference.py"),
           "test_fast_scorer and not rank_alike or stacked"),
    # its own tests, and the refusals and unwritable outputs its command shares with ddkit's (in-process)
    Target("evaluator/evaluate.py", ("tests/evaluator/test_evaluator.py", "tests/cli/test_messages.py",
                                     "tests/cli/test_hardening.py"), "evaluator or scores_txt"),
    Target("challenge_kit/core/contract.py", ("tests/core/test_contract.py",)),
    Target("challenge_kit/core/models.py", ("tests/core/test_models.py", "tests/core/test_architectures.py",
                                            "tests/evaluator/test_scorer_reference.py")),  # its init
    Target("challenge_kit/core/augment.py", ("tests/core/test_augment.py",)),
    # verify/, a file at a time: what reads files and reference models against its own tests, the hostile files and
    # the zip members it loads (not the baselines, which build sets from data); the checks on a tensor in memory,
    # which every one of those tests passes through, against their own tests (a pass of the three files is 30 s)
    *(Target(f"challenge_kit/core/verify/{name}.py", ("tests/core/test_verify.py", "tests/core/test_untrusted.py",
                                                      "tests/kit/test_bundle.py"), "not baseline")
      for name in ("loading", "labels")),
    Target("challenge_kit/core/verify/normalization.py", ("tests/core/test_verify.py",
                                                          "tests/core/test_normalization.py")),
    *(Target(f"challenge_kit/core/verify/{name}.py", ("tests/core/test_verify.py", "tests/core/test_verify_rows.py"))
      for name in ("format", "tensor")),
    Target("challenge_kit/core/verify/report.py", ("tests/core/test_verify.py",)),
    # its own tests, the hostile files, the safe loader's tests in test_storage, and the export's refusals (not the
    # two whole submissions that distill for minutes on the way to reading their file)
    Target("challenge_kit/core/reading.py", ("tests/core/test_reading.py", "tests/core/test_untrusted.py",
                                             "tests/core/test_storage.py", "tests/kit/test_submission.py"),
           "not make_submission"),
    Target("challenge_kit/matching.py", ("tests/kit/test_matching.py", "tests/kit/test_matching_reference.py",
                                         "tests/kit/test_matching_arithmetic.py")),
    Target("challenge_kit/optim.py", ("tests/kit/test_optim.py",)),
    # its own tests, and test_distill's reasons (not the whole distillation runs, which reach it too)
    Target("challenge_kit/selection.py", ("tests/kit/test_selection.py", "tests/kit/test_distill.py"),
           "not test_distill or reason"),
    Target("challenge_kit/data/cifar.py", ("tests/kit/data/test_data.py",), "cifar"),  # the rest reads Tiny ImageNet
)
NOT_MUTATED = ("module constants and dataclass fields (mutmut mutates inside functions only): tests state them as "
               "facts; decorated functions other than classmethod/staticmethod, except " + ", ".join(
                   f"@{d}" for d in LIFTED) + " (lifted by this bench)")


@dataclass
class Mutant:
    """One mutant that the tests did not kill, or that is listed as equivalent."""

    name: str  # mutmut's, e.g. challenge_kit.core.contract.x_normalize__mutmut_3
    file: str
    function: str  # Class.method or function
    status: str  # mutmut's: survived, no tests, timeout, suspicious, segfault, ...
    before: str  # the changed lines, as in the source
    after: str
    reason: str = ""  # why it is equivalent, or why only CUDA tells it apart (from the equivalents file)


@dataclass
class Row:
    """One module's run: its counts, what survived, and which listed equivalents no longer apply."""

    module: str
    tests: list[str]  # the pytest arguments that select them
    mutants: int = 0
    killed: int = 0
    survived: int = 0
    timeout_or_suspicious: int = 0  # the tests did not pass: counted as caught
    equivalent: int = 0
    cuda_only: int = 0  # a device move: the same run on the CPU (listed as [[cuda_only]])
    unchecked: int = 0  # not run before --minutes ran out
    seconds: float = 0.0
    survivors: list[Mutant] = field(default_factory=list)
    equivalents: list[Mutant] = field(default_factory=list)
    cuda: list[Mutant] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # equivalents file entries that matched no surviving mutant

    @property
    def percent(self) -> float:
        """Caught (killed, timed out or crashed) of the checked mutants that are neither equivalent nor a device move
        this machine cannot see (NaN: none ran)."""
        real = self.mutants - self.equivalent - self.cuda_only - self.unchecked
        return 100.0 * (self.killed + self.timeout_or_suspicious) / real if real else math.nan


def fail(where: str, problem: str) -> None:
    print(f"error: {where}: {problem}", file=sys.stderr)
    raise SystemExit(2)


def pick(names: list[str] | None) -> list[Target]:
    """The targets named by path, or by a unique part of it (``scorer``, ``verify``); all without names."""
    if not names:
        return list(TARGETS)
    picked = []
    for name in names:
        exact = [t for t in TARGETS if t.path.rstrip("/") == name.rstrip("/")]
        found = exact or [t for t in TARGETS if name in t.path.rstrip("/").split("/")
                          or Path(t.path).stem == name]
        if len(found) != 1:
            fail("--module", f"{name!r} names {len(found)} modules; one of {', '.join(t.path for t in TARGETS)}")
        picked += found
    return picked


def lift_decorators(source: str) -> str:
    """Top-level functions and methods decorated only by ``LIFTED`` decorators, rewritten as the plain def followed
    by ``f = decorator(f)``: the same object bound to the same name, in a form mutmut mutates."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    bodies = [tree.body] + [node.body for node in tree.body if isinstance(node, ast.ClassDef)]
    functions = [node for body in bodies for node in body
                 if isinstance(node, ast.FunctionDef) and node.decorator_list
                 and all(ast.get_source_segment(source, d) in LIFTED for d in node.decorator_list)]
    for node in sorted(functions, key=lambda n: n.lineno, reverse=True):
        wrapped = node.name
        for decorator in reversed(node.decorator_list):
            wrapped = f"{ast.get_source_segment(source, decorator)}({wrapped})"
        lines.insert(node.end_lineno, f"{' ' * node.col_offset}{node.name} = {wrapped}\n")
        del lines[node.decorator_list[0].lineno - 1:node.lineno - 1]
    return "".join(lines)


def copy_checkout(dest: Path) -> None:
    """The checkout's tracked and untracked files (not the ignored ones: data, outputs) copied into ``dest``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True)
    if listed.returncode != 0:
        fail(str(ROOT), "not a git checkout (the bench copies the files git lists)")
    for name in sorted(set(listed.stdout.decode().split("\0")) - {""}):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def configure(copy: Path, target: Target) -> None:
    """mutmut's settings for one target, appended to the copy's pyproject.toml; the target's files lifted."""
    only = f"{target.path}*" if target.path.endswith("/") else target.path
    for path in ([copy / target.path] if not target.path.endswith("/") else sorted((copy / target.path).glob("*.py"))):
        path.write_text(lift_decorators(path.read_text()))
    others = sorted(p.name for p in copy.iterdir() if p.name not in (*SOURCES, "tests", "mutants"))
    settings = {"source_paths": list(SOURCES), "only_mutate": [only],
                "pytest_add_cli_args_test_selection": target.selection(),
                "pytest_add_cli_args": ["-p", "no:cacheprovider"], "also_copy": others}
    lines = ["", "[tool.mutmut]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items()),
             "use_git_change_detection = false", ""]
    with open(copy / "pyproject.toml", "a") as f:
        f.write("\n".join(lines))


def prune_sessions(temp: Path, keep: int) -> None:
    """The pytest session folders of finished forks removed, but the newest ``keep``: a forked mutant's session
    never prunes its own (its lock outlives it), and a module whose tests write files (the hostile ones) leaves
    100 MB or more a mutant. A session whose fork still runs is left alone: with two forks, one slow mutant's
    folder would otherwise go while its test writes there, a failure counted as a kill."""
    sessions = [p for p in temp.glob("pytest-of-*/pytest-*") if p.name.removeprefix("pytest-").isdigit()]
    for old in sorted(sessions, key=lambda p: int(p.name.removeprefix("pytest-")))[:-keep]:
        if not running(old):
            shutil.rmtree(old, ignore_errors=True)


def running(session: Path) -> bool:
    """Whether the process that made a pytest session folder (the pid in its ``.lock``) is still alive."""
    try:
        os.kill(int((session / ".lock").read_text()), 0)
    except (OSError, ValueError):  # no lock (the session ended), no such process, or a lock being written
        return False
    return True


def run_mutmut(copy: Path, jobs: int, minutes: float | None) -> bool:
    """``mutmut run`` in the copy, interrupted (as Ctrl-C does: what ran is kept) after ``minutes``; its output (a
    spinner, mostly) goes to ``mutmut.log`` there. Whether it was cut."""
    env = {k: v for k, v in os.environ.items() if k != "MUTANT_UNDER_TEST"}
    # tests that start `python -m ...` children must import the mutated copy too
    # pytest's own temp folders inside the copy, pruned as the run goes and removed with it: thousands of forked
    # sessions' folders filled a 60 GB disk
    env.update(PYTHONPATH=str(copy / "mutants"), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               PYTEST_DEBUG_TEMPROOT=str(copy / "pytest-tmp"))
    (copy / "pytest-tmp").mkdir()
    # made now: a folder missing when Python starts is cached as unimportable, and the checkout's code would be used
    (copy / "mutants").mkdir()
    with open(copy / "mutmut.log", "w") as log:
        # nice execs mutmut; SIGINT restored, as a bench started in the background (`&`) has it ignored
        done = subprocess.Popen(["nice", "-n", "10", shutil.which("mutmut"), "run", "--max-children", str(jobs)],
                                cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = None if minutes is None else time.monotonic() + minutes * 60
        while done.poll() is None:
            prune_sessions(copy / "pytest-tmp", keep=2 * jobs + 2)
            if deadline is not None and time.monotonic() > deadline:
                done.send_signal(signal.SIGINT)
                done.wait()
                return True
            time.sleep(10)
    text = (copy / "mutmut.log").read_text(errors="replace")
    if done.returncode != 0:
        tail = [line for line in text.replace("\r", "\n").splitlines() if line.strip() and "⠋" not in line][-15:]
        print("\n".join(tail), file=sys.stderr)
        fail(f"mutmut in {copy}", f"exited {done.returncode} before the mutants ran (its log's end above)")
    return False


def load_equivalents() -> list[dict]:
    """Both kinds of entry, each marked with its ``kind`` (``equivalent`` or ``cuda_only``)."""
    try:
        listed = tomllib.loads(EQUIVALENTS.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        fail(str(EQUIVALENTS), f"not a list of [[equivalent]] and [[cuda_only]] entries ({e})")
    if set(listed) - set(KINDS):
        fail(str(EQUIVALENTS), f"unknown tables {sorted(set(listed) - set(KINDS))}; only {', '.join(KINDS)}")
    entries, seen = [{**e, "kind": kind} for kind in KINDS for e in listed.get(kind, [])], set()
    for entry in entries:
        if set(entry) != {"file", "function", "before", "after", "reason", "kind"} or not entry["reason"].strip():
            fail(str(EQUIVALENTS), f"an entry needs file, function, before, after and a reason: {entry}")
        found = key(entry["file"], entry["function"], entry["before"], entry["after"])
        if found in seen:
            fail(str(EQUIVALENTS), f"listed twice: {entry}")
        seen.add(found)
    return entries


def key(file: str, function: str, before: str, after: str) -> tuple[str, str, str, str]:
    return file, function, before.strip(), after.strip()


def read_results(copy: Path, target: Target, equivalents: list[dict], seconds: float, cut: bool = False) -> Row:
    """The run's counts and survivors, from mutmut's records in the copy; listed equivalents set apart. A mutant's
    tests "interrupted" (pytest's exit 2) are the bench's cut when there was one (``cut``), else the mutant's own
    doing: a KeyboardInterrupt it let escape the code that should catch it, counted as caught."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    listed = {key(e["file"], e["function"], e["before"], e["after"]): e for e in equivalents
              if e["file"].startswith(target.path)}
    row, used = Row(target.path, target.selection(), seconds=round(seconds, 1)), set()
    metas = sorted((copy / "mutants").glob(f"{target.path}*.py.meta" if target.path.endswith("/")
                                           else f"{target.path}.meta"))
    with contextlib.chdir(copy):
        for meta in metas:
            file = str(meta.relative_to(copy / "mutants")).removesuffix(".meta")
            for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                status = status_by_exit_code[code]
                row.mutants += 1
                if status == "killed":
                    row.killed += 1
                    continue
                if status in ("timeout", "suspicious", "segfault") or (status == "check was interrupted by user"
                                                                       and not cut):
                    row.timeout_or_suspicious += 1
                    continue
                if status in ("not checked", "check was interrupted by user"):
                    row.unchecked += 1
                    continue
                if status not in ("survived", "no tests"):
                    fail(f"mutmut in {copy}", f"{name} was not run ({status})")
                function, cls = orig_function_and_class_names_from_key(name)
                function = f"{cls}.{function}" if cls else function
                diff = get_diff_for_mutant(name, path=file).splitlines()[2:]
                before = "\n".join(line[1:].strip() for line in diff if line.startswith("-"))
                after = "\n".join(line[1:].strip() for line in diff if line.startswith("+"))
                found = key(file, function, before, after)
                entry = listed.get(found, {})
                mutant = Mutant(name, file, function, status, before, after, entry.get("reason", ""))
                if entry.get("kind") == "cuda_only":
                    row.cuda_only += 1
                    row.cuda.append(mutant)
                    used.add(found)
                elif entry:
                    row.equivalent += 1
                    row.equivalents.append(mutant)
                    used.add(found)
                else:
                    row.survived += 1
                    row.survivors.append(mutant)
    row.stale = [] if row.unchecked else [f"{f}: {fn}: {b!r} -> {a!r}" for f, fn, b, a in sorted(set(listed) - used)]
    return row


def run_target(target: Target, equivalents: list[dict], jobs: int, minutes: float | None, keep: bool) -> Row:
    copy = Path(tempfile.mkdtemp(prefix="ddkit-mutation-"))
    try:
        copy_checkout(copy)
        configure(copy, target)
        start = time.perf_counter()
        cut = run_mutmut(copy, jobs, minutes)
        return read_results(copy, target, equivalents, time.perf_counter() - start, cut)
    finally:
        if keep:
            print(f"kept {copy} ({target.path}): `mutmut browse` there shows every mutant", file=sys.stderr)
        else:
            shutil.rmtree(copy, ignore_errors=True)


def show(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mutation testing: each module against its own tests (mutmut 3)")
    for column in ("module", "mutants", "killed", "survived", "timeout/suspicious", "equivalent", "CUDA only",
                   "not run", "% killed of non-equivalent", "wall time"):
        table.add_column(column, justify="left" if column == "module" else "right")
    for r in rows:
        table.add_row(r.module, str(r.mutants), str(r.killed), str(r.survived), str(r.timeout_or_suspicious),
                      str(r.equivalent), str(r.cuda_only), str(r.unchecked), f"{r.percent:.1f}",
                      f"{r.seconds / 60:.1f} min")
    console = Console()  # not the kit's: the table must not depend on which checkout is installed
    console.print(table)
    console.print(f"notes: timeouts and crashes count as killed (the tests did not pass); not run: left when --minutes "
                  f"ran out (the % is of those run); not mutated: {NOT_MUTATED}")
    for r in rows:
        for m in r.survivors:
            console.print(f"survived ({m.status}): {m.file}: {m.function}: {m.before!r} -> {m.after!r}  [{m.name}]",
                          markup=False)
        for stale in r.stale:
            console.print(f"stale equivalent (killed now, or gone): {stale}", markup=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", help="a module (path, or a unique part of it); repeatable; "
                                                          "default: all")
    parser.add_argument("--json", type=Path, help="also write the table and the survivors here")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--minutes", type=float, help="stop each module after this long and count what ran "
                                                      "(mutmut tries the quickest mutants first)")
    parser.add_argument("--keep", action="store_true", help="keep each module's copy (its path is printed)")
    parser.add_argument("--list", action="store_true", help="print each module and its test files, run nothing")
    args = parser.parse_args()
    targets = pick(args.module)
    if args.list:
        for t in targets:
            print(f"{t.path}: {' '.join(t.selection())}")
        return
    if args.jobs < 1:
        fail("--jobs", f"must be at least 1, got {args.jobs}")
    if args.minutes is not None and not args.minutes > 0:
        fail("--minutes", f"must be more than 0, got {args.minutes}")
    if shutil.which("mutmut") is None:
        fail("mutmut", 'not installed; pip install -e ".[mutation]"')
    if args.json is not None and not args.json.parent.is_dir():
        fail(str(args.json), "its folder does not exist")
    equivalents = load_equivalents()
    rows = []
    for target in targets:
        rows.append(run_target(target, equivalents, args.jobs, args.minutes, args.keep))
        r = rows[-1]
        print(f"{r.module}: {r.mutants} mutants, {r.survived} survived, {r.unchecked} not run, {r.percent:.1f}% "
              f"killed of non-equivalent ({r.seconds / 60:.1f} min)", file=sys.stderr)
    if args.json is not None:  # first: an hour's survivors must outlive a failure to draw the table
        args.json.write_text(json.dumps({"jobs": args.jobs, "not_mutated": NOT_MUTATED,
                                         "modules": [{**asdict(r), "percent": None if math.isnan(r.percent)
                                                      else round(r.percent, 1)} for r in rows]},
                                        indent=2) + "\n")
    show(rows)


if __name__ == "__main__":
    main()
