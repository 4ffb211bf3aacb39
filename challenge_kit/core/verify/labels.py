"""The class order: stored labels, the stored lr, and what a reference model says the images show.

The scorer labels image ``i`` as class ``i // ipc`` and trains with its own lr, whatever the file says.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from challenge_kit.core.contract import LR as SCORER_LR
from challenge_kit.core.contract import DatasetSpec, default_labels
from challenge_kit.core.devices import resolve_device
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.expert_file import infer_model_config, read_expert
from challenge_kit.core.models import ConvNet, load_flat_, predict
from challenge_kit.core.reading import load_rows, load_torch
from challenge_kit.core.verify.report import FAIL, PASS, WARN, Check, _listing, _shape

# Class-order analysis with a reference model: a class counts as moved when at least this share of its
# images is predicted as its new class (chance: ipc / K images) and more than twice as many as its own
# class (a moved class's images are of another class: its own label gets only confusions). A cycle of
# the best assignment counts when most of its classes qualify. Simulated with 200 classes x 10 images: a
# model agreeing 50% finds >90% of a random permutation and both of two swapped pairs, with no false
# mapping even when 30% of each class goes to one confusable class; false mappings need confusions as
# frequent as correct answers (then a swap and a confusion are indistinguishable).
MOVED_SHARE = 0.3
# Below this agreement (chance is 1/K), with or without the suspected mapping, the model is too weak to
# judge the class order, or the set is broken: a heuristic, so a WARN.
LOW_AGREEMENT = 0.25


def check_labels(labels: torch.Tensor, spec: DatasetSpec) -> Check:
    """The scorer labels image i as class i // ipc: artifact labels must say exactly that."""
    expected = default_labels(spec.num_classes, spec.ipc)
    n, k = spec.num_images, spec.num_classes
    labels = labels.detach().cpu()
    if labels.is_floating_point() and labels.dim() == 2:
        if tuple(labels.shape) != (n, k):
            return Check("labels", FAIL, f"soft labels of shape {_shape(labels.shape)}, expected {n}x{k}")
        wrong = labels.argmax(1) != expected
        per_class = torch.bincount(expected[wrong], minlength=k)
        counts = {int(c): int(per_class[c]) for c in per_class.nonzero().flatten()}
        where = (f"argmax disagrees with the default-order class for {int(wrong.sum())} images ("
                 + _listing([f"class {c}: {m}" for c, m in counts.items()]) + ")") if counts else \
            "argmax agrees with the default order, but the label distributions are lost"
        return Check("labels", FAIL, f"soft labels ({n}x{k}) are dropped: the scorer trains on default-order "
                                     f"hard labels; {where}", {"disagree_per_class": counts})
    if labels.dim() != 1 or labels.shape[0] != n:
        return Check("labels", FAIL, f"labels of shape {_shape(labels.shape)}: expected {n} class indices "
                                     f"or {n}x{k} soft labels")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        return Check("labels", FAIL, "hard labels hold non-integer values")
    labels = labels.long()
    if torch.equal(labels, expected):
        return Check("labels", PASS, "hard labels in default order (image i is class i // ipc)")
    differ = (labels != expected).nonzero().flatten()
    first = int(differ[0])
    balanced = labels.min() >= 0 and labels.max() < k and bool((torch.bincount(labels, minlength=k) == spec.ipc).all())
    fix = "; reorder the images by label (stable sort) to fix" if balanced else ""
    return Check("labels", FAIL, f"{len(differ)} of {n} hard labels differ from the default order (image "
                                 f"{first} is labelled {int(labels[first])}, the scorer calls it class "
                                 f"{int(expected[first])}){fix}", {"differ": len(differ)})


def check_lr(lr: float) -> Check:
    return Check("lr", WARN, f"learned lr {lr:.4g} is stored, but the scorer ignores it and trains with "
                             f"lr {SCORER_LR}", {"lr": lr})


def best_assignment(score: np.ndarray) -> np.ndarray:
    """Row ``i`` -> column ``result[i]``, a permutation maximizing the total score.

    scipy is imported here, so a verify without a reference model never loads it.
    """
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(np.asarray(score, dtype=np.float64), maximize=True)[1].astype(np.int64)


def _moved(confusion: np.ndarray, c: int, m: int, need: int) -> bool:
    """Class ``c``'s images clearly look like class ``m``: enough of them, well over those that stay, and fewer
    than ``need`` images of third classes predicted as ``m`` (a weak model's favourite class, which absorbs several
    classes, is no evidence of a permutation)."""
    count = confusion[c, m]
    third = confusion[:, m].sum() - count - confusion[m, m]
    return count >= need and count > 2 * confusion[c, c] and third < need


def suspected_mapping(confusion: np.ndarray, ipc: int) -> dict[int, int]:
    """Classes whose images look like another class: the well-supported part of the best class assignment.

    ``confusion[k, j]`` counts images in class ``k``'s rows predicted as ``j``. The best assignment
    is split into cycles; a cycle is kept when most of its classes moved clearly (see
    ``MOVED_SHARE`` and ``_moved``), and only those classes are reported. A class a weak model confuses one
    way, which the assignment can route through a cycle, does not qualify on its own; nor does the choice among
    assignments of equal total, which a solver may break either way.
    """
    perm = best_assignment(confusion)
    need = max(2, math.ceil(MOVED_SHARE * ipc))
    mapping, seen = {}, set()
    for start in range(len(perm)):
        if start in seen or perm[start] == start:
            continue
        cycle, k = [], start
        while k not in seen:
            seen.add(k)
            cycle.append(k)
            k = int(perm[k])
        moved = [c for c in cycle if _moved(confusion, c, int(perm[c]), need)]
        if 2 * len(moved) > len(cycle):
            mapping.update({c: int(perm[c]) for c in moved})
    return dict(sorted(mapping.items()))


def load_reference_model(path: str | Path, spec: DatasetSpec) -> nn.Module:
    """An expert file (its last snapshot) or a DC/MTT ConvNet state dict ``.pt``, checked against ``spec``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        expert = read_expert(path, snapshots=False)
        net = load_flat_(ConvNet(expert.model_config), load_rows(path, "snapshots", [expert.completed_epochs])[0])
    else:
        state = load_torch(path)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise KitFileError(path, f"holds a {type(state).__name__}, not a ConvNet state dict of tensors")
        state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
        try:
            net = ConvNet(infer_model_config([tuple(v.shape) for v in state.values()], spec))
            net.load_state_dict(state)
        except ValueError:
            raise KitFileError(path, "not a ConvNet state dict (DC/MTT layout: features.0.weight ... "
                                     "classifier.bias)") from None
        except RuntimeError as e:
            raise KitFileError(path, f"does not fit a ConvNet for {spec.describe()} "
                                     f"({str(e).strip().splitlines()[-1].strip()})") from None
    config = net.config
    if (config.num_classes, config.image_size, config.channels) != (spec.num_classes, spec.image_size,
                                                                     spec.channels):
        raise KitFileError(path, f"is a model for {config.num_classes} classes of {config.channels}x"
                                 f"{config.image_size}x{config.image_size} images, not {spec.describe()}")
    return net


def check_reference(images: torch.Tensor, spec: DatasetSpec, model: nn.Module | str | Path) -> Check:
    """Do the images of class k's rows look like class k to a model trained on real data?"""
    if not isinstance(model, nn.Module):  # a model passed in stays on its device
        model = load_reference_model(model, spec).to(resolve_device())
    x = torch.nan_to_num(images.detach().float())
    with torch.no_grad():
        logits = predict(model, model, x, next(model.parameters()).device, batch_size=256).float().cpu()
    k, ipc = spec.num_classes, spec.ipc
    if logits.shape[1] != k:
        raise ValueError(f"the reference model predicts {logits.shape[1]} classes, {spec.describe()} has {k}")
    truth = default_labels(k, ipc).numpy()
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, logits.argmax(1).numpy()), 1)
    agreement = float(np.trace(confusion)) / len(truth)
    per_class = np.diag(confusion)
    mapping = suspected_mapping(confusion, ipc)
    details = {"agreement": agreement, "per_class_agreement": (per_class / ipc).tolist(),
               "mapping": mapping}
    chance = f"chance {1 / k:.0%}"
    mapped = np.trace(confusion) + sum(confusion[c, m] - confusion[c, c] for c, m in mapping.items())
    details["agreement_with_mapping"] = float(mapped) / len(truth)
    weak = max(agreement, details["agreement_with_mapping"]) < LOW_AGREEMENT
    if mapping and not weak:
        moves = _listing([f"class {c} -> {m}" for c, m in mapping.items()])
        return Check("reference", FAIL, f"class order looks permuted (e.g. wnids.txt order instead of sorted): "
                                        f"the images of {len(mapping)} classes look like another class ({moves});"
                                        f" agreement with the default order {agreement:.0%}, with this mapping "
                                        f"{details['agreement_with_mapping']:.0%}", details)
    worst = np.argsort(per_class, kind="stable")[:3]
    lows = ", ".join(f"class {c} {per_class[c]}/{ipc}" for c in worst)
    zero = int((per_class == 0).sum())
    reason = (f"reference model agrees with the default-order labels for {agreement:.0%} of images "
              f"({chance}); {zero} classes with no agreeing image; lowest: {lows}")
    if mapping:
        return Check("reference", WARN, f"{reason}; too weak to judge the class order (a possible permutation "
                                        f"moves {len(mapping)} classes, agreement with it "
                                        f"{details['agreement_with_mapping']:.0%})", details)
    if agreement < LOW_AGREEMENT:
        return Check("reference", WARN, f"{reason}; no consistent class permutation", details)
    return Check("reference", PASS, reason, details)

