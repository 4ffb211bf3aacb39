"""Reading a file to verify: a challenge ``.pt`` (refused, not run, when its pickle calls anything), a ddkit
artifact, or a zip member; the spec as the evaluator resolves it; the manifest's provenance note.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import SUBMISSION, DatasetSpec, get_spec
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.core.reading import Refused, load_torch, load_torch_bytes, within
from challenge_kit.core.submission import (
    MANIFEST,
    declared_problem,
    manifest_spec,
    read_manifest,
    resolve_spec,
)
from challenge_kit.core.verify.report import FAIL, WARN, Check, Report
from challenge_kit.core.verify.tensor import verify_tensor

# What torch.save of a numpy array references; anything else outside torch's allowlist is refused.
NUMPY_GLOBALS = {"numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
                 "numpy._core.multiarray._reconstruct"}


def _refusal(source, name: str | Path, error: Refused) -> Check:
    """Why ``load_torch`` refused a file, read from the pickle's global names without running anything.

    A pickled numpy array is named as a FAIL (it is a submission, in the wrong type); anything else is
    re-raised, naming what the pickle would have called.
    """
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(source)
    except Exception:  # not a zip checkpoint (legacy pickle or garbage): keep load_torch's message
        raise error from None
    if unsafe and all(n in NUMPY_GLOBALS or n.startswith("numpy.dtypes.") for n in unsafe):
        return Check("type", FAIL, "a numpy array, not a torch.Tensor: the scorer crashes on it; "
                                   "save torch.from_numpy(array)")
    if unsafe:
        called = ", ".join(sorted(unsafe))
        raise KitFileError(name, f"refused without loading: the pickle would call {called}") from None
    raise error


def _report(obj, spec: DatasetSpec | None, source: str | None, path: str | Path, labels=None, lr=None,
            reference_model=None) -> Report:
    if isinstance(obj, Check):
        return Report([obj], spec, source, str(path))
    return verify_tensor(obj, spec, labels, lr, reference_model, spec_source=source, path=path)


def verify_path(path: str | Path, dataset: str = "auto", reference_model: nn.Module | str | Path | None = None,
                spec: DatasetSpec | None = None) -> Report:
    """Check a challenge ``.pt`` or a ddkit distilled artifact (``.safetensors``); KitFileError when it cannot be read.

    The spec: ``spec`` if given, else ``--dataset``, else a ``manifest.json`` beside the file or the
    artifact's metadata (when they fit the shape and the dataset's normalization; as the evaluator resolves it),
    else the shape. What the manifest says adds lines to the report, never a verdict.
    """
    path = Path(path)
    within(path, SUBMISSION)
    labels = lr = declared = None
    if path.suffix == ".safetensors":
        artifact = DistilledArtifact.load(path)
        obj, labels, lr, declared = artifact.images, artifact.labels, artifact.lr, artifact.spec
    else:
        try:
            obj = load_torch(path, SUBMISSION)
        except Refused as e:
            obj = _refusal(path, path, e)
    manifest, notes = _manifest(path)
    source = None
    if spec is not None:
        source = "caller"
    elif dataset not in (None, "auto"):
        spec, source = get_spec(dataset), "--dataset"
    elif isinstance(obj, torch.Tensor):
        notes += [Check("provenance", WARN, f"{where} declares a spec that {problem}: ignored, judged by the "
                                            "dataset's own")
                  for where, s in ((MANIFEST, manifest), ("the artifact's metadata", declared))
                  if s is not None and (problem := declared_problem(s))]
        try:
            spec, source = resolve_spec(tuple(obj.shape), declared=(manifest, declared))
        except KitValueError:
            spec = None
    report = _report(obj, spec, source, path, labels, lr, reference_model)
    report.checks += notes
    return report


def _manifest(path: Path) -> tuple[DatasetSpec | None, list[Check]]:
    """The spec a ``manifest.json`` beside ``path`` declares, and its provenance lines: an unreadable manifest is
    one of those lines (WARN), not a reason to leave the file unchecked."""
    try:
        return manifest_spec(path), provenance(path)
    except KitFileError as e:
        return None, [Check("provenance", WARN, f"{e}: ignored")]


def provenance(path: Path) -> list[Check]:
    """A WARN when the manifest beside the file says it is a research set exported without its labels."""
    dropped = (read_manifest(path) or {}).get("labels_dropped")
    if not isinstance(dropped, dict):
        return []
    return [Check("provenance", WARN, str(dropped.get("note", "exported with its labels dropped")), dropped)]


def verify_bytes(data: bytes, name: str, spec: DatasetSpec) -> Report:
    """A challenge ``.pt`` held in memory (a zip member) checked against ``spec``; KitFileError when unreadable."""
    try:
        obj = load_torch_bytes(data, name, SUBMISSION)
    except Refused as e:
        obj = _refusal(io.BytesIO(data), name, e)
    return _report(obj, spec, "member name", name)

