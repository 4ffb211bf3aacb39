"""``python -m evaluator``: score a submission folder the way the challenge's ``evaluate.py`` does.

Both public invocations work: the CodaLab form ``INPUT OUTPUT`` (``INPUT/res/{name}.pt`` and
``INPUT/ref/{name}_test.pt``) and the flag form ``--submit_dir D [--truth_dir D] [--output_dir D]``, with the
official script's defaults (``./reference_data/`` and ``./``). Writes ``scores.txt`` (exactly
``correct: <float>``, no newline) and ``scores.json`` (per-round detail). Like the public script it needs every
dataset's file; unlike it, it loads files safely, says what ``verify`` finds wrong before scoring, scores part
of a submission when asked (``--partial``), runs on CPU when there is no GPU, can be seeded, and under
``torchrun`` spreads each dataset's rounds over the ranks (rank 0 prints and writes).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from challenge_kit.core.contract import SPECS, DatasetSpec
from challenge_kit.core.devices import tune_allocator, usable_device
from challenge_kit.core.errors import KitError, KitFileError, file_errors
from challenge_kit.core.folders import output_folder
from challenge_kit.core.interrupts import exit_code, interrupted_line, interruption, sigterm_as_interrupt, speaks
from challenge_kit.core.parallel import LOCAL, RankZero, Shard, process_group
from challenge_kit.core.seeds import rounds_problem, seed_problem
from challenge_kit.core.storage import atomic_write, save_json
from challenge_kit.core.submission import load_reference, load_submission
from challenge_kit.core.verify import findings, verify_tensor
from evaluator.scorer import EPOCHS, ROUNDS, evaluate_images

SCORES_TXT = "scores.txt"
SCORES_JSON = "scores.json"
TRUTH_DIR, OUTPUT_DIR = "./reference_data/", "./"  # the official script's defaults


@dataclass
class Entry:
    """One dataset to score: the submission as stored, its test set, and where each was read."""

    spec: DatasetSpec
    images: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    submission: str
    reference: str


def missing_reason(specs: Iterable[DatasetSpec]) -> str:
    files = " and ".join(s.submission_file for s in specs)
    return (f"no such file; the official evaluate.py reads {files} and crashes without one (leaving an empty "
            f"{SCORES_TXT}); --partial scores the others alone")


def find_datasets(submit_dir: Path, truth_dir: Path, specs: Iterable[DatasetSpec], partial: bool
                  ) -> tuple[list[tuple[DatasetSpec, Path, Path]], list[str]]:
    """(spec, submission, reference) for each dataset; a missing submission fails unless ``partial``."""
    specs = tuple(specs)
    present, skipped = [], []
    for spec in specs:
        submission = submit_dir / spec.submission_file
        if not submission.is_file() and not submission.is_symlink():  # a broken link is named by the loader
            if not partial:
                raise KitFileError(submission, missing_reason(specs))
            skipped.append(spec.name)
            continue
        reference = truth_dir / spec.reference_file
        if not reference.is_file():
            raise KitFileError(reference, f"no such reference file (needed to score {submission})")
        present.append((spec, submission, reference))
    if not present:
        names = " or ".join(s.submission_file for s in specs)
        raise KitFileError(submit_dir, f"holds no submission ({names})")
    return present, skipped


def ready(device: str | None, output_dir: str | Path | None) -> str:
    """The device proven usable and OUTPUT writable, first: neither may cost a whole scoring run."""
    device = str(usable_device(device))
    if output_dir is not None:
        output_folder(output_dir)
    return device


def load_entry(spec: DatasetSpec, submission: Path, reference: Path) -> Entry:
    return Entry(spec, load_submission(submission, spec), *load_reference(reference, spec), str(submission),
                 str(reference))


def score_entries(entries: list[Entry], output_dir: str | Path | None = None, *, skipped: Iterable[str] = (),
                  rounds: int = ROUNDS, epochs: int = EPOCHS, seed: int | None = None, device: str | None = None,
                  show_progress: bool = True, log: Callable[[str], None] | None = None,
                  report: Callable[[dict], None] | None = None, shard: Shard = LOCAL) -> dict:
    """Score loaded datasets in order, the final figure the mean over them; write the outputs if asked.

    Before any training, ``log`` gets the files read and each FAIL or WARN ``verify`` finds (the scorer
    itself checks only shapes: a broken set just scores badly). ``report`` gets the result before it is
    written, so a failing write (a full disk) loses no score. Under torchrun (``shard``) each dataset's
    rounds are spread over the ranks.
    """
    skipped, log = list(skipped), log or (lambda line: None)
    device = ready(device, output_dir)
    checks = {e.spec.name: findings(verify_tensor(e.images, e.spec, spec_source="file name", path=e.submission))
              for e in entries}
    for e in entries:
        for line in [f"{e.spec.name}: scoring {e.submission} on {e.reference}", *checks[e.spec.name]]:
            log(line)
    results = {}
    for e in entries:
        score = evaluate_images(e.images, e.spec, e.test_images, e.test_labels, rounds=rounds, epochs=epochs,
                                seed=seed, device=device, show_progress=show_progress, shard=shard)
        results[e.spec.name] = {**score.to_dict(), "submission": e.submission, "reference": e.reference,
                                "verify": checks[e.spec.name]}
    final = sum(r["mean"] for r in results.values()) / len(results)
    summary = {
        "correct": final,
        "datasets": results,
        "skipped": skipped,
        "partial": bool(skipped),
        "epochs": epochs,
        "rounds": rounds,
        "seed": seed,
        "device": device,
        "official": not skipped and all(r["official"] for r in results.values()),
    }
    if report is not None:
        report(summary)
    if output_dir is not None:
        write_scores(summary, Path(output_dir))
    return summary


def write_scores(summary: dict, output_dir: Path) -> None:
    """``scores.txt`` and ``scores.json``; a failure names the file and points at the result already shown."""
    path = output_dir / SCORES_TXT
    try:
        atomic_write(path, lambda tmp: tmp.write_text(f"correct: {summary['correct']}"))
        path = output_dir / SCORES_JSON
        save_json(summary, path)
    except (OSError, KitFileError) as e:
        problem = e.problem if isinstance(e, KitFileError) else e.strerror or str(e)
        raise KitFileError(path, f"{problem}; not written, the result is the one printed above") from None


def score_directory(submit_dir: str | Path, truth_dir: str | Path, output_dir: str | Path, *,
                    specs: Iterable[DatasetSpec] = tuple(SPECS.values()), rounds: int = ROUNDS,
                    epochs: int = EPOCHS, seed: int | None = None, device: str | None = None,
                    show_progress: bool = True, partial: bool = False, log: Callable[[str], None] | None = None,
                    report: Callable[[dict], None] | None = None,
                    before: Callable[[], None] | None = None) -> RankZero[dict]:
    """Validate every dataset first (fail before any training), score each, write the outputs.

    Missing inputs are reported before the output folder is probed, so a typo creates nothing. Started by
    torchrun, each dataset's rounds are spread over the ranks; rank 0 alone calls ``before`` (once the inputs
    are found), logs, reports and writes, and holds the summary.
    """
    present, skipped = find_datasets(Path(submit_dir), Path(truth_dir), specs, partial)
    device = ready(device, output_dir)
    with process_group(device) as (shard, dev):
        if shard.leader and before is not None:
            before()
        entries = [load_entry(*found) for found in present]
        summary = score_entries(entries, output_dir if shard.leader else None, skipped=skipped, rounds=rounds,
                                epochs=epochs, seed=seed, device=str(dev), show_progress=show_progress and shard.leader,
                                log=log if shard.leader else None, report=report if shard.leader else None,
                                shard=shard)
    return RankZero.make(shard, lambda: summary)


def report_lines(summary: dict, where: str) -> list[str]:
    """The result for people: each dataset's rounds, what was skipped, the final figure."""
    lines = []
    for name, r in summary["datasets"].items():
        rounds = " ".join(f"{a:.4f}" for a in r["rounds"])
        lines.append(f"{name}: {r['mean']:.4f} (rounds {rounds}; seeds {r['seeds']}; "
                     f"{r['epochs']} epochs on {r['device']})")
    lines += [f"skipped {name}: no {name}.pt in {where}" for name in summary["skipped"]]
    if summary["partial"]:
        lines.append("partial: the mean of the datasets present, not a figure the official scorer gives")
    return lines + [f"correct: {summary['correct']}"]


def seed(text: str) -> int:
    """``--seed``: a whole number within the bound every random stream takes (argparse names the option)."""
    value = int(text)
    problem = seed_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evaluator",
        description="Score a Track 1 submission like the challenge's evaluate.py. Either INPUT OUTPUT "
                    "(CodaLab: INPUT/res/{name}.pt, INPUT/ref/{name}_test.pt) or --submit_dir with the official "
                    "script's other flags and defaults. Under torchrun each dataset's rounds are spread over the "
                    "ranks.")
    parser.add_argument("input", nargs="?", help="CodaLab input folder holding res/ and ref/")
    parser.add_argument("output", nargs="?", help="folder for scores.txt and scores.json")
    parser.add_argument("--submit_dir", help="folder with cifar100.pt and tinyimagenet.pt")
    parser.add_argument("--truth_dir", help=f"folder with {{name}}_test.pt (default: {TRUTH_DIR}, as the official "
                                            "script's)")
    parser.add_argument("--output_dir", help=f"folder for scores.txt and scores.json (default: {OUTPUT_DIR})")
    parser.add_argument("--seed", type=seed, default=None, help="seed; each round gets one derived from it")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds per dataset (official: {ROUNDS})")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help=f"training epochs per round (official: {EPOCHS}); shorter only for checks")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--partial", action="store_true",
                        help="score the datasets present when one is missing (the official script crashes)")
    args = parser.parse_args(argv)
    flags = (args.submit_dir, args.truth_dir, args.output_dir)
    if args.input is not None:
        if args.output is None or any(f is not None for f in flags):
            parser.error("give either INPUT OUTPUT or --submit_dir [--truth_dir] [--output_dir], not both")
        args.submit_dir, args.truth_dir = str(Path(args.input) / "res"), str(Path(args.input) / "ref")
        args.output_dir = args.output
    elif args.submit_dir is None:
        parser.error("give INPUT OUTPUT, or --submit_dir (with --truth_dir and --output_dir, or their defaults)")
    else:
        args.truth_dir = TRUTH_DIR if args.truth_dir is None else args.truth_dir
        args.output_dir = OUTPUT_DIR if args.output_dir is None else args.output_dir
    if args.rounds < 1 or args.epochs < 1:
        parser.error("--rounds and --epochs must be at least 1")
    if (problem := rounds_problem(args.rounds)) is not None:
        parser.error(f"--rounds: {problem}")
    return args


def notes(args: argparse.Namespace, specs: Iterable[DatasetSpec]) -> None:
    """What differs from an official run, said once (by rank 0) before any training."""
    if (args.epochs, args.rounds) != (EPOCHS, ROUNDS):
        print(f"shortened run: {args.epochs} epochs x {args.rounds} rounds instead of the official "
              f"{EPOCHS} x {ROUNDS}; not comparable to the leaderboard")
    if args.input is None and not args.truth_dir.endswith(("/", os.sep)):
        first = next(iter(specs)).reference_file
        print(f"note: --truth_dir has no trailing slash: the official evaluate.py would read "
              f"{args.truth_dir}{first} (it joins by string); give {args.truth_dir}/ there")


def main(argv: list[str] | None = None, specs: Iterable[DatasetSpec] = tuple(SPECS.values())) -> int:
    args = parse_args(argv)
    tune_allocator()
    try:
        with sigterm_as_interrupt(), file_errors():
            score_directory(args.submit_dir, args.truth_dir, args.output_dir, specs=specs, rounds=args.rounds,
                            epochs=args.epochs, seed=args.seed, device=args.device, partial=args.partial, log=print,
                            report=lambda summary: print("\n".join(report_lines(summary, args.submit_dir))),
                            before=lambda: notes(args, specs))
    except BaseException as e:
        interrupt = interruption(e)
        if interrupt is not None:  # Ctrl-C or SIGTERM: the clean-up ran on the way out
            if speaks():
                print(interrupted_line(interrupt, "python -m evaluator", "run the same command again"),
                      file=sys.stderr)
            return exit_code(interrupt)
        if not isinstance(e, KitError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
