"""What an expert store and a distillation checkpoint are compared on: the settings that change their result.

An expert file is continued or reused when its expert would be trained the same: every expert setting but how
many experts there are and how long they train, each chosen part as its name and its own parameters only. A
checkpoint resumes unless a setting that changes the run's result differs: the labels (profile, method,
description) and how often checkpoints are written do not, and the iteration count may change while the
checkpoint is short of both counts (a run continued further, or stopped sooner, is the run of that count).

Files hold a recipe as its writer saw it: the present form (a part as ``{"name": ..., its parameters}``) or the
flat form of the kit before parts owned their parameters (a part's name, and every part's parameters as fields
of the section, chosen or not). ``canonical`` reads both, and fills the fields added since (``ADDED``).
"""

from __future__ import annotations

from typing import Any

from challenge_kit import parts
from challenge_kit.core.contract import FAITHFUL

# Expert settings that do not change a trajectory (how many experts, how far to train).
NOT_TRAJECTORY = ("num_experts", "epochs")
# Recipe fields that do not change a run's result: labels, and when checkpoints are written.
NOT_RESULT = ("profile", "method", "description", "distill.checkpoint_every", "distill.iterations")
# Fields added after runs began saving recipes, at the value that reproduces what the code did before them.
ADDED = {"eval": {"scorer": FAITHFUL}, "experts": {"arithmetic": "float32"}, "distill": {"arithmetic": "float32"}}


def _kinds(section: str) -> list[str]:
    return [kind for kind, key in parts.FIELDS.items() if key.startswith(f"{section}.")]


def canonical(section: str, values: dict) -> dict:
    """Recipe section ``section`` as written by any version of the kit -> each part as its name and its own
    parameters (the flat form's other parts' parameters dropped), fields added since at their old values."""
    kinds = _kinds(section)
    flat = {name for kind in kinds for name in parts.parameters(kind)}
    out = dict(ADDED.get(section, {}))
    for key, value in values.items():
        if key in kinds and isinstance(value, str):  # the flat form: the part's own parameters are beside it
            takes = [name for name, (_, owners) in parts.parameters(key).items() if value in owners]
            value = {"name": value, **{name: values[name] for name in takes if name in values}}
        if key in kinds or key not in flat:
            out[key] = value
    return out


def expert_settings(values: dict) -> dict:
    """The expert settings (``section_dict(ExpertConfig)``, or a file's record) that shape a trajectory."""
    return {k: v for k, v in canonical("experts", values).items() if k not in NOT_TRAJECTORY}


def run_identity(recipe: dict) -> dict:
    """A saved ``Recipe.to_dict()`` (any version) as a checkpoint is compared on, nested, without ``NOT_RESULT``."""
    out = {}
    for key, value in recipe.items():
        value = canonical(key, value) if isinstance(value, dict) else value
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if f"{key}.{k}" not in NOT_RESULT}
        if key not in NOT_RESULT:
            out[key] = value
    return out


def flatten(identity: dict, prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"experts.objective.rho": 0.01, ...}``, in their order."""
    out: dict[str, Any] = {}
    for key, value in identity.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every flattened setting two identities disagree on, in ``old``'s order."""
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k), b.get(k)) for k in [*a, *(k for k in b if k not in a)] if a.get(k) != b.get(k)]


def resume_differences(saved: dict, now: dict, iteration: int) -> list[tuple[str, Any, Any]]:
    """What a checkpoint of recipe ``saved`` at ``iteration`` disagrees on with recipe ``now`` (both
    ``to_dict()``) among the settings that change the result.

    The iteration count changes nothing while the checkpoint is short of both counts; at or past either, the
    saved state holds the last iteration's selection (or the decision) of the other count."""
    wrong = differences(run_identity(saved), run_identity(now))
    there, here = (r.get("distill", {}).get("iterations") if isinstance(r.get("distill"), dict) else None
                   for r in (saved, now))
    if there != here and not (isinstance(there, int) and isinstance(here, int) and iteration < min(there, here)):
        wrong.append(("distill.iterations", there, here))
    return wrong
