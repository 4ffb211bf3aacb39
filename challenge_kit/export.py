"""Turn a distilled set into what gets uploaded: ``<name>.pt``, ``manifest.json``, ``preview.png``.

Export refuses to write a submission the label-consistency checker fails, and it verifies the file's bytes
as read back (not just the tensor in memory), so the manifest's report describes exactly what is uploaded.
The three files are replaced together or not at all, and an earlier export is replaced only when asked.
"""

from __future__ import annotations

import hashlib
import io
import platform
import sys
from importlib.metadata import version
from pathlib import Path

import torch

import challenge_kit
from challenge_kit import parts
from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import DatasetSpec, default_labels
from challenge_kit.core.errors import ExportRefused, KitFileError
from challenge_kit.core.reading import load_torch_bytes
from challenge_kit.core.storage import json_bytes, refuse_replacing, torch_to, write_bytes, write_together
from challenge_kit.core.submission import MANIFEST
from challenge_kit.core.verify import verify_tensor
from challenge_kit.plots import write_preview
from challenge_kit.runs import BEST, SUMMARY, read_summary

PREVIEW = "preview.png"
REPLACE_HINT = "already exists (an earlier export, or another file); pass --overwrite to replace it, or choose " \
    "another --out"


def export_files(spec: DatasetSpec, out_dir: str | Path) -> list[Path]:
    """What an export writes, in the order they are renamed into place: the manifest, which describes the
    other two, last."""
    return [Path(out_dir) / name for name in (spec.submission_file, PREVIEW, MANIFEST)]


def claim_export(spec: DatasetSpec, out_dir: str | Path, overwrite: bool) -> None:
    """Before any work: refuse to replace an earlier export (or a file of that name) unless ``overwrite``."""
    if not overwrite:
        refuse_replacing(export_files(spec, out_dir), REPLACE_HINT)


def versions() -> dict:
    return {"ddkit": challenge_kit.__version__, "torch": torch.__version__, "torchvision": version("torchvision"),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}


def dropped_labels_note(artifact: DistilledArtifact) -> dict:
    """What the manifest (and then ``verify``) says about a research set exported without its labels."""
    method, part = artifact.extra.get("method"), artifact.extra.get("labels_part")
    return {"method": method, "labels_part": part, "kind": "soft" if artifact.soft else "hard",
            "note": f"images of a {method} research run whose {part} labels were dropped: the scorer trains "
                    "them with default-order hard labels, which is not how they were distilled"}


def challenge_labels(artifact: DistilledArtifact) -> bool:
    """Whether the run's labels part makes sets the scorer reads (its declared ``challenge``), as the artifact
    records it; one written before it did names a labels part of the catalogue."""
    said = artifact.extra.get("challenge_labels")
    if isinstance(said, bool):
        return said
    part = parts.REGISTRY["labels"].get(artifact.extra.get("labels_part", "hard"))
    return part is not None and part.challenge


def export_images(images: torch.Tensor, spec: DatasetSpec, out_dir: str | Path, *, source: str | Path,
                  labels: torch.Tensor | None = None, reference_model: str | Path | None = None,
                  extra: dict | None = None, hint: str = "", names: list[str] | None = None) -> dict:
    """Verify a set held in memory, write the three files together, return the manifest (``source`` names the
    set; ``names`` the classes in the preview). Commands ask ``claim_export`` first, before their work: this
    replaces what is there."""
    target, preview, manifest_file = export_files(spec, out_dir)
    images = images.detach().float().contiguous().cpu().clone()
    precheck = verify_tensor(images, spec, labels=labels, reference_model=reference_model)
    if not precheck.ok:
        raise ExportRefused(f"{source}: verify failed, not exporting: " + "; ".join(
            f"{c.name}: {c.reason}" for c in precheck.checks if c.status == "FAIL") + hint)

    stream = io.BytesIO()
    torch_to(images, stream)
    data = stream.getvalue()
    report = verify_tensor(load_torch_bytes(data, str(target)), spec, reference_model=reference_model,
                           spec_source="caller", path=str(target))
    if not report.ok:
        raise ExportRefused(f"{target}: the file as written fails verify; nothing written")
    manifest = {
        "file": spec.submission_file,
        "sha256": hashlib.sha256(data).hexdigest(),
        "shape": list(images.shape),
        "dtype": str(images.dtype),
        "spec": spec.to_dict(),
        "challenge_submission": spec.challenge,
        "labels": "default order (image i is class i // ipc)",
        "verify": report.to_dict(),
        "versions": versions(),
        **(extra or {}),
    }
    write_together([(target, lambda tmp: write_bytes(tmp, data)),
                    (preview, lambda tmp: write_preview(images, spec, tmp, names=names)),
                    (manifest_file, lambda tmp: write_bytes(tmp, json_bytes(manifest)))])
    return manifest


def selection_record(selection: dict) -> dict:
    """What the manifest says of the choice: split, export, reason, and the scorer's arithmetic when the run
    recorded it (runs before the fast scorer selected in float32 and did not)."""
    return {**{k: selection.get(k) for k in ("split", "export", "reason")},
            **({"scorer": selection["scorer"]} if "scorer" in selection else {})}


def export_run(run_dir: str | Path, out_dir: str | Path, *, reference_model: str | Path | None = None,
               extra: dict | None = None, drop_labels: bool = False, overwrite: bool = False,
               names: list[str] | None = None) -> dict:
    """Export the run's chosen set (``export_images``), its manifest also describing the run; without
    ``overwrite``, an earlier export in ``out_dir`` is refused (``claim_export``) before anything is written.

    A set distilled with learned or assigned labels fails the label check and is refused, unless
    ``drop_labels``: then the images go out alone and the manifest says where they came from.
    """
    run_dir = Path(run_dir)
    best = run_dir / BEST
    if not best.is_file():
        raise KitFileError(best, "no distilled set in this run directory (has `ddkit distill` finished?)")
    artifact = DistilledArtifact.load(best)
    spec = artifact.spec
    claim_export(spec, out_dir, overwrite)
    research = not challenge_labels(artifact) or artifact.soft
    dropped = dropped_labels_note(artifact) if drop_labels and research else None
    labels = default_labels(spec.num_classes, spec.ipc) if dropped else artifact.labels
    summary_path = run_dir / SUMMARY
    summary = read_summary(run_dir) if summary_path.is_file() else {}
    hint = "; pass --drop-labels to export the images alone (scored with default-order hard labels)" \
        if research else ""
    return export_images(artifact.images, spec, out_dir, source=best, labels=labels, reference_model=reference_model,
                         hint=hint, names=names, extra={
                             "learned_lr_not_used_by_scorer": artifact.lr,
                             "best_iteration": artifact.extra.get("iteration"),
                             "selection_accuracy": artifact.extra.get("accuracy"),
                             "selection": selection_record(summary.get("selection") or {}),
                             "labels_dropped": dropped,
                             "run": summary,
                             **(extra or {}),
                         })
