"""Every check on a candidate submission held in memory (the export step, and each file once read)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from challenge_kit.core.contract import DatasetSpec, spec_for_shape
from challenge_kit.core.verify.format import check_dtype, check_finite, check_shape, check_spec, check_type
from challenge_kit.core.verify.labels import check_labels, check_lr, check_reference
from challenge_kit.core.verify.normalization import check_normalization
from challenge_kit.core.verify.report import WARN, Check, Report


def verify_tensor(images, spec: DatasetSpec | None = None, labels: torch.Tensor | None = None,
                  lr: float | None = None, reference_model: nn.Module | str | Path | None = None, *,
                  spec_source: str | None = None, path: str | Path | None = None) -> Report:
    """Check a candidate submission in memory; ``spec`` defaults to the challenge spec of its shape."""
    if spec is None and isinstance(images, torch.Tensor):
        spec = spec_for_shape(tuple(images.shape))
        spec_source = "shape" if spec else None
    elif spec is not None and spec_source is None:
        spec_source = "caller"
    report = Report([check_type(images)], spec, spec_source, None if path is None else str(path))
    if not isinstance(images, torch.Tensor):
        return report
    checks = report.checks
    if spec is not None:
        checks.append(check_spec(spec, spec_source))
    checks += [check_shape(images, spec), check_dtype(images), check_finite(images)]
    shaped = spec is not None and tuple(images.shape) == spec.shape
    if spec is not None and images.dim() == 4 and images.shape[1] == spec.channels and images.numel():
        checks.append(check_normalization(images, spec))
    if labels is not None and spec is not None:
        checks.append(check_labels(labels, spec))
    if lr is not None:
        checks.append(check_lr(lr))
    if reference_model is not None:
        if shaped:
            checks.append(check_reference(images, spec, reference_model))
        else:
            checks.append(Check("reference", WARN, "skipped: the images do not have the spec's shape"))
    return report
