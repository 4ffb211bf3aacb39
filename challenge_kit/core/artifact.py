"""The kit's own distilled-set file (safetensors with a spec in its metadata)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.core.reading import load_tensors
from challenge_kit.core.storage import save_tensors

ARTIFACT_FORMAT = "ddkit-distilled"
ARTIFACT_VERSION = 1


@dataclass
class DistilledArtifact:
    """The kit's own distilled set: images, labels (hard or soft), optional learned lr, and its spec."""

    images: torch.Tensor
    labels: torch.Tensor
    spec: DatasetSpec
    lr: float | None = None
    extra: dict | None = None

    @property
    def soft(self) -> bool:
        return self.labels.is_floating_point() and self.labels.dim() == 2

    def save(self, path: str | Path) -> Path:
        tensors = {"images": self.images.float(), "labels": self.labels}
        if self.lr is not None:
            tensors["lr"] = torch.tensor([float(self.lr)])
        meta = {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, "spec": self.spec.to_dict(),
                "labels": "soft" if self.soft else "hard", **(self.extra or {})}
        return save_tensors(tensors, path, meta)

    @classmethod
    def load(cls, path: str | Path) -> DistilledArtifact:
        tensors, meta = load_tensors(path)
        if meta.get("format") != ARTIFACT_FORMAT:
            raise KitFileError(path, f"not a ddkit distilled artifact (format={meta.get('format')!r})")
        for key in ("images", "labels"):
            if key not in tensors:
                raise KitFileError(path, f"artifact has no {key!r} tensor")
        extra = {k: v for k, v in meta.items() if k not in ("format", "version", "spec", "labels")}
        try:
            spec = DatasetSpec.from_dict(meta["spec"])
        except (KeyError, TypeError, ValueError, KitValueError) as e:
            raise KitFileError(path, f"artifact metadata has no valid spec ({e!r})") from None
        lr = float(tensors["lr"].item()) if "lr" in tensors else None
        return cls(tensors["images"], tensors["labels"], spec, lr, extra)
