"""Every random stream the kit and the scorer draw from, named in one place and derived from the user's seed.

Each function keeps the values its stream has always drawn, so seeds given before this module existed replay
the same experts, sets and scores. Streams that must not collide are derived apart (a digest, an offset or a
``SeedSequence``), never by reusing one generator for two jobs.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where a stream is made: recipes and options read MAX_SEED before torch is imported
    import torch

SEED_MASK = 0x7FFFFFFF  # fresh seeds are non-negative 31-bit ints, as the official scorer's would be
FINAL_SEED_OFFSET = 1  # selection's fresh rounds: (seed + 1) * 1000 + r, never a candidate's round seed
# The largest seed a recipe or an option takes: every stream derived from it (seed + 1, seed * 1000 + r) fits a
# generator, and numpy's legacy seeding takes no more.
MAX_SEED = 2**32 - 1
ROUNDS_PER_SEED = 1000  # round r of seed s is seeded s * 1000 + r: a 1001st round would replay seed s + 1's first


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with ``seed`` on ``device``: the holdout split, a baseline's draw, a distillation run."""
    import torch

    return torch.Generator(device=device).manual_seed(seed)


def expert_generator(seed: int, index: int) -> torch.Generator:
    """The one CPU generator behind everything random in expert ``index`` (init, shuffling, DSA): a digest of
    (seed, index), so experts are independent of each other and of how they are split over processes."""
    import torch

    digest = hashlib.sha256(f"ddkit-expert:{seed}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def distill_generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """Distillation's CPU stream (initialization, expert and start-epoch draws, batches) and its device stream
    (the augmentation of every inner step)."""
    return generator(seed), generator(seed + 1, device)


def fresh_seed() -> int:
    """An unpredictable seed (the official scorer seeds nothing), drawn so a run can still be replayed."""
    return int.from_bytes(os.urandom(4), "little") & SEED_MASK


def round_seeds(seed: int | None, rounds: int) -> list[int]:
    """One scorer seed per round derived from ``seed`` (fresh ones when ``seed`` is None): ``seed * 1000 + r``, whole.

    Never cut to 31 bits: with rounds below 1000 every (seed, round) pair has its own round seed, and a round seed
    reaches the generators only through ``stream_seeds``, which takes any size. Seeds up to 2,147,482 give the values
    they gave when round seeds were cut to 31 bits."""
    if seed is None:
        return [fresh_seed() for _ in range(rounds)]
    return [seed * ROUNDS_PER_SEED + r for r in range(rounds)]


def shown(number: int) -> str:
    """A number as a message quotes it: in full when short, else by its length (a pasted 10**300)."""
    text = str(number)
    return text if len(text) <= 40 else f"a {len(text.lstrip('-'))}-digit number"


def seed_problem(seed: int) -> str | None:
    """Why ``seed`` cannot be a user's seed, or None: checked when the option is read, before any data is."""
    if 0 <= seed <= MAX_SEED:
        return None
    return f"must be a whole number from 0 to {MAX_SEED} (2**32 - 1), got {shown(seed)}"


def rounds_problem(rounds: int) -> str | None:
    """Why ``rounds`` scorer rounds are too many, or None (too few is the caller's, with its other counts)."""
    if rounds <= ROUNDS_PER_SEED:
        return None
    return (f"at most {ROUNDS_PER_SEED} rounds, got {shown(rounds)} (the official score takes 3; each round trains "
            f"a network for --epochs epochs, and round r of seed s is seeded s * {ROUNDS_PER_SEED} + r)")


def final_round_seed(seed: int) -> int:
    """The seed whose rounds re-score selection's leader against the initialization (fresh, paired)."""
    return seed + FINAL_SEED_OFFSET


def stream_seeds(seed: int) -> tuple[int, int, int]:
    """Seeds of a scorer round's three streams: network init, device draws (shuffle, augmentation parameters),
    augmentation group. Derived by ``SeedSequence`` so they differ in their low 32 bits: torch's CPU generator
    keeps only those, so ``seed + 2**32`` would replay the very same numbers."""
    import numpy as np

    return tuple(int(s) for s in np.random.SeedSequence(seed).generate_state(3))
