"""The label-consistency checker: would the scorer read this file the way its author meant?

The scorer never sees labels: image ``i`` is class ``i // ipc``, pixels must be mean/std normalized, and
the file must be a bare tensor of one exact shape. Every way to get that wrong scores badly without an
error, so each is a check here: PASS, WARN (suspicious, exit code unaffected) or FAIL, with a one-line
reason. ``verify_tensor`` checks tensors in memory (the export step), ``verify_path`` checks a file.
"""

from __future__ import annotations

from challenge_kit.core.verify.format import check_dtype, check_finite, check_shape, check_spec, check_type
from challenge_kit.core.verify.labels import (
    best_assignment,
    check_labels,
    check_lr,
    check_reference,
    load_reference_model,
    suspected_mapping,
)
from challenge_kit.core.verify.loading import provenance, verify_bytes, verify_path
from challenge_kit.core.verify.normalization import channel_correlation, check_normalization, spectral_exponent
from challenge_kit.core.verify.report import FAIL, PASS, WARN, Check, Report, findings
from challenge_kit.core.verify.tensor import verify_tensor

__all__ = [
    "FAIL", "PASS", "WARN", "Check", "Report", "best_assignment", "channel_correlation", "check_dtype",
    "check_finite", "check_labels", "check_lr", "check_normalization", "check_reference", "check_shape",
    "check_spec", "check_type", "findings", "load_reference_model", "provenance", "spectral_exponent",
    "suspected_mapping", "verify_bytes", "verify_path", "verify_tensor",
]
