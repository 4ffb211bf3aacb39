"""``ddkit evaluate``'s work: score one distilled set, or a whole submission .zip, exactly as the challenge does.

The options are checked and the device proven usable before anything is read; ``verify``'s findings and the
files read are logged before any training, so a broken set is named before it scores badly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from challenge_kit.bundle import zip_entries
from challenge_kit.core.devices import usable_device
from challenge_kit.core.errors import KitValueError
from challenge_kit.core.parallel import RankZero, process_group
from challenge_kit.core.seeds import rounds_problem
from challenge_kit.core.submission import load_inputs
from challenge_kit.core.verify import findings, verify_tensor
from evaluator.evaluate import score_entries
from evaluator.fast import FAITHFUL, FAST, arithmetic
from evaluator.scorer import EPOCHS, ROUNDS, evaluate_images

logger = logging.getLogger(__name__)


def log(line: str) -> None:
    logger.info(line)


def budget_note(epochs: int, rounds: int) -> None:
    """Said after the inputs load, so that an error stays the only line."""
    if (epochs, rounds) != (EPOCHS, ROUNDS):
        logger.warning(f"shortened run: {epochs} epochs x {rounds} rounds, not the official {EPOCHS} x {ROUNDS}; "
                       "not comparable to the leaderboard")


def check_options(path: str, reference: str | None, reference_dir: str | None, output_dir: str | None,
                  partial: bool, dataset: str | None, epochs: int, rounds: int, fast: bool = False) -> bool:
    """Whether ``path`` is a submission .zip; a KitValueError when the options do not fit what it is."""
    if epochs < 1 or rounds < 1:
        raise KitValueError("--epochs and --rounds must be at least 1")
    if (problem := rounds_problem(rounds)) is not None:
        raise KitValueError(f"--rounds: {problem}")
    is_zip = Path(path).suffix == ".zip"
    if is_zip and (reference_dir is None or reference is not None or dataset is not None):
        raise KitValueError(f"{path}: a submission .zip is scored with --reference-dir (not --reference or "
                            "--dataset)")
    if is_zip and fast:
        raise KitValueError(f"{path}: --fast is for one set; a submission .zip is scored as the challenge does")
    if not is_zip and (reference is None or reference_dir or output_dir or partial):
        raise KitValueError(f"{path}: one file is scored with --reference (--reference-dir, --out and "
                            "--partial are for a submission .zip)")
    return is_zip


def score(path: str, *, reference: str | None = None, reference_dir: str | None = None,
          output_dir: str | None = None, partial: bool = False, dataset: str | None = None,
          epochs: int | None = None, rounds: int | None = None, seed: int | None = None,
          device: str | None = None, report: Callable[[dict], None] | None = None, fast: bool = False
          ) -> RankZero[dict]:
    """The score as one JSON-ready dict: a .zip's summary (``datasets``, ``correct``) or one set's rounds.

    ``report`` gets it before ``scores.txt`` and ``scores.json`` are written: a failing write loses no score.
    Under torchrun the rounds run on separate ranks (each with its own seed): rank 0 gets the result (and
    reports it); the other ranks hold none.
    """
    report = report or (lambda result: None)
    epochs, rounds = EPOCHS if epochs is None else epochs, ROUNDS if rounds is None else rounds
    is_zip = check_options(path, reference, reference_dir, output_dir, partial, dataset, epochs, rounds, fast)
    dev = usable_device(device)
    with process_group(dev) as (shard, dev):
        if is_zip:
            entries, skipped = zip_entries(path, reference_dir, partial=partial)
            if shard.leader:
                budget_note(epochs, rounds)
            summary = score_entries(entries, output_dir if shard.leader else None, skipped=skipped,
                                    rounds=rounds, epochs=epochs, seed=seed, device=str(dev),
                                    show_progress=shard.leader, log=log if shard.leader else None,
                                    report=(lambda summary: report({"path": path, **summary})) if shard.leader
                                    else None, shard=shard)
            return RankZero.make(shard, lambda: {"path": path, **summary})
        inputs = load_inputs(path, reference, dataset)
        spec = inputs.spec
        checks = findings(verify_tensor(inputs.images, spec, inputs.labels, inputs.lr,
                                        spec_source=inputs.spec_source, path=path))
        if shard.leader:
            budget_note(epochs, rounds)
            if fast:
                logger.warning(arithmetic(FAST, dev).describe())
            log(f"{path}: {spec.describe()} (spec from {inputs.spec_source}); {inputs.test_images.shape[0]} test "
                f"images from {reference}")
            for line in checks:
                log(line)
        scored = evaluate_images(inputs.images, spec, inputs.test_images, inputs.test_labels, rounds=rounds,
                                 epochs=epochs, seed=seed, device=dev, show_progress=shard.leader, shard=shard,
                                 how=arithmetic(FAST if fast else FAITHFUL, dev))
        if not shard.leader:
            return RankZero(False)
    result = {**scored.to_dict(), "path": str(path), "reference": str(reference), "spec_source": inputs.spec_source,
              "verify": checks, "ranks": shard.world}
    report(result)
    return RankZero(True, result)
