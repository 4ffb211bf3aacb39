"""The bundled reimplementation of the challenge scorer (Track 1), reusable as a library.

``evaluate_images`` scores a distilled set as the leaderboard does (a ``Score``); ``train_rounds`` trains
seeded scorer rounds (model selection, comparisons); both take the arithmetic as an ``Arithmetic``, which
``arithmetic`` makes from a mode's name. ``load_inputs`` reads and validates what gets scored.
"""

from challenge_kit.core.submission import load_inputs, load_reference, load_submission, resolve_spec
from evaluator.fast import Arithmetic, arithmetic
from evaluator.scorer import EPOCHS, ROUNDS, Score, evaluate_images, lr_at, train_rounds

__all__ = ["EPOCHS", "ROUNDS", "Arithmetic", "Score", "arithmetic", "evaluate_images", "load_inputs",
           "load_reference", "load_submission", "lr_at", "resolve_spec", "train_rounds"]
