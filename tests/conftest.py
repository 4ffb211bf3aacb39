"""Test session set-up: the same allocator settings the CLI uses (they halve CPU step times)."""

from challenge_kit.runtime import tune_allocator

tune_allocator()
