"""The bundled reimplementation of the challenge scorer (Track 1), reusable as a library.

``evaluate_images`` scores a distilled set as the leaderboard does; ``train_and_test`` is one round of
it (model selection during distillation); ``load_inputs`` reads and validates what gets scored.
"""

from challenge_kit.core.submission import load_inputs, load_reference, load_submission, resolve_spec
from evaluator.scorer import EPOCHS, ROUNDS, evaluate_images, lr_at, train_and_test

__all__ = ["EPOCHS", "ROUNDS", "evaluate_images", "load_inputs", "load_reference", "load_submission",
           "lr_at", "resolve_spec", "train_and_test"]
