"""``python -m evaluator``: score a submission folder the way the challenge's ``evaluate.py`` does.

Both public invocations work: the CodaLab form ``INPUT OUTPUT`` (``INPUT/res/{name}.pt`` and
``INPUT/ref/{name}_test.pt``) and the flag form ``--submit_dir D --truth_dir D --output_dir D``. Writes
``scores.txt`` (exactly ``correct: <float>``, no newline) and ``scores.json`` (per-round detail).
Unlike the public script it loads files safely, scores whichever datasets are present, runs on CPU when
there is no GPU, and can be seeded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path

from challenge_kit.contract import SPECS, DatasetSpec
from challenge_kit.runtime import tune_allocator, usable_device
from challenge_kit.storage import KitFileError, atomic_write, file_errors, output_folder, save_json
from evaluator.inputs import load_reference, load_submission
from evaluator.scorer import EPOCHS, ROUNDS, evaluate_images

SCORES_TXT = "scores.txt"
SCORES_JSON = "scores.json"


def find_datasets(submit_dir: Path, truth_dir: Path, specs: Iterable[DatasetSpec]
                  ) -> tuple[list[tuple[DatasetSpec, Path, Path]], list[str]]:
    """(spec, submission, reference) for each dataset whose submission is present; the skipped names."""
    present, skipped = [], []
    for spec in specs:
        submission = submit_dir / spec.submission_file
        if not submission.is_file():
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


def score_directory(submit_dir: str | Path, truth_dir: str | Path, output_dir: str | Path, *,
                    specs: Iterable[DatasetSpec] = tuple(SPECS.values()), rounds: int = ROUNDS,
                    epochs: int = EPOCHS, seed: int | None = None, device: str | None = None,
                    show_progress: bool = True) -> dict:
    """Validate every present dataset first (fail before any training), score each, write the outputs."""
    device = str(usable_device(device))
    output_folder(output_dir)  # an unwritable OUTPUT must not cost a whole scoring run
    specs = tuple(specs)
    present, skipped = find_datasets(Path(submit_dir), Path(truth_dir), specs)
    loaded = [(spec, load_submission(sub, spec), *load_reference(ref, spec)) for spec, sub, ref in present]
    results = {spec.name: evaluate_images(images, spec, test_images, test_labels, rounds=rounds,
                                          epochs=epochs, seed=seed, device=device,
                                          show_progress=show_progress)
               for spec, images, test_images, test_labels in loaded}
    final = sum(r["mean"] for r in results.values()) / len(results)
    summary = {
        "correct": final,
        "datasets": results,
        "skipped": skipped,
        "epochs": epochs,
        "rounds": rounds,
        "seed": seed,
        "device": device,
        "official": all(r["official"] for r in results.values()),
    }
    output_dir = Path(output_dir)
    atomic_write(output_dir / SCORES_TXT, lambda tmp: tmp.write_text(f"correct: {final}"))
    save_json(summary, output_dir / SCORES_JSON)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evaluator",
        description="Score a Track 1 submission like the challenge's evaluate.py. Either INPUT OUTPUT "
                    "(CodaLab: INPUT/res/{name}.pt, INPUT/ref/{name}_test.pt) or the three directory flags.")
    parser.add_argument("input", nargs="?", help="CodaLab input folder holding res/ and ref/")
    parser.add_argument("output", nargs="?", help="folder for scores.txt and scores.json")
    parser.add_argument("--submit_dir", help="folder with cifar100.pt and/or tinyimagenet.pt")
    parser.add_argument("--truth_dir", help="folder with {name}_test.pt")
    parser.add_argument("--output_dir", help="folder for scores.txt and scores.json")
    parser.add_argument("--seed", type=int, default=None, help="seed; each round gets one derived from it")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds per dataset (official: {ROUNDS})")
    parser.add_argument("--epochs", type=int, default=EPOCHS,
                        help=f"training epochs per round (official: {EPOCHS}); shorter only for checks")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)
    flags = (args.submit_dir, args.truth_dir, args.output_dir)
    if args.input is not None:
        if args.output is None or any(f is not None for f in flags):
            parser.error("give either INPUT OUTPUT or --submit_dir/--truth_dir/--output_dir, not both")
        args.submit_dir, args.truth_dir = str(Path(args.input) / "res"), str(Path(args.input) / "ref")
        args.output_dir = args.output
    elif any(f is None for f in flags):
        parser.error("give INPUT OUTPUT, or all of --submit_dir, --truth_dir and --output_dir")
    if args.rounds < 1 or args.epochs < 1:
        parser.error("--rounds and --epochs must be at least 1")
    return args


def main(argv: list[str] | None = None, specs: Iterable[DatasetSpec] = tuple(SPECS.values())) -> int:
    args = parse_args(argv)
    tune_allocator()
    if (args.epochs, args.rounds) != (EPOCHS, ROUNDS):
        print(f"shortened run: {args.epochs} epochs x {args.rounds} rounds instead of the official "
              f"{EPOCHS} x {ROUNDS}; not comparable to the leaderboard")
    try:
        with file_errors():
            summary = score_directory(args.submit_dir, args.truth_dir, args.output_dir, specs=specs,
                                      rounds=args.rounds, epochs=args.epochs, seed=args.seed, device=args.device)
    except (KitFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, r in summary["datasets"].items():
        rounds = " ".join(f"{a:.4f}" for a in r["rounds"])
        print(f"{name}: {r['mean']:.4f} (rounds {rounds}; seeds {r['seeds']}; "
              f"{r['epochs']} epochs on {r['device']})")
    for name in summary["skipped"]:
        print(f"skipped {name}: no {name}.pt in {args.submit_dir}")
    print(f"correct: {summary['correct']}")
    return 0
