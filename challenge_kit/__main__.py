"""``python -m challenge_kit`` (and ``torchrun -m challenge_kit``) runs the ``ddkit`` CLI."""

from challenge_kit.cli import app

app()
