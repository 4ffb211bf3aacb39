"""Coreset baselines: the IPC real training images per class a rule picks, to ask whether a distilled set beats the
best real subset at its budget (DD-Ranking's question, and the difficulty-matched coresets of recent critiques).

The features and difficulty scores come from networks trained the scorer's way on the training pool (``proxy``:
the challenge ConvNet, the scorer's SGD, DSA and schedule, shortened to a few epochs, with the scorer's seeded
streams), looked at after every epoch, or from an expert store (``expert_select``: the init parts themselves);
the picking rules are ``parts.coresets``, shared with the init parts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.devices import resolve_device
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.core.models import ModelConfig, predict
from challenge_kit.core.progress import make_progress
from challenge_kit.core.reading import load_tensors
from challenge_kit.core.seeds import generator, round_seeds
from challenge_kit.core.storage import save_tensors
from challenge_kit.experts.store import ExpertStore, data_fingerprint
from challenge_kit.parts import coresets
from challenge_kit.parts.catalogue import CORESETS, REGISTRY
from challenge_kit.parts.expert_parts import el2n
from challenge_kit.parts.initializations import real
from challenge_kit.parts.kinds import InitContext
from evaluator.scorer import fresh_round, train

METHODS = ("random", *CORESETS)
SCORE_EPOCHS = 10  # proxy epochs: EL2N is read early in training (Paul et al.: a tenth of the way through)
SCORE_MODELS = 2  # proxy networks whose EL2N is averaged and forgetting events summed
PROXY_FORMAT = "ddkit-proxy-scores"

log = logging.getLogger(__name__)


@dataclass
class ProxyScores:
    """What the proxy networks say of every pool image: penultimate features (first network), EL2N after the
    last epoch (mean over networks), forgetting events over the epochs (summed)."""

    features: torch.Tensor
    el2n: torch.Tensor
    forgetting: torch.Tensor
    epochs: int
    models: int
    seconds: float  # of the training, also when read back
    kept: str | None = None  # the cache entry they were read from (None: trained in this process)


@dataclass
class Selection:
    """A baseline's images in default order and how they were picked (the manifest's record)."""

    images: torch.Tensor
    method: str
    seed: int
    parameters: dict
    seconds: float

    def record(self) -> dict:
        return {"method": self.method, "seed": self.seed, "parameters": self.parameters,
                "selection_seconds": round(self.seconds, 3)}


def check_method(method: str, option: str = "--method", epochs: int = SCORE_EPOCHS, models: int = SCORE_MODELS
                 ) -> None:
    """Refuse an unknown method or a proxy of no epochs or networks, before any data is read."""
    if method not in METHODS:
        raise KitValueError(f"{option} {method}: choose {', '.join(METHODS)}")
    if epochs < 1 or models < 1:
        raise KitValueError("--score-epochs and --score-models must be at least 1")


def proxy(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, seed: int, epochs: int = SCORE_EPOCHS,
          models: int = SCORE_MODELS, device: torch.device | str | None = None, show_progress: bool = True,
          cache_dir: str | Path | None = None) -> ProxyScores:
    """Train ``models`` challenge ConvNets the scorer's way for ``epochs`` epochs on the pool (round seeds of
    ``seed``), classifying every pool image after each epoch; their features, EL2N and forgetting events. A bar
    shows the epochs: on a CPU the default proxy takes minutes, so with ``cache_dir`` the scores are kept there and
    read back for the same pool, seed, budget and kind of device (the next method, a rerun of ``compare``)."""
    device = resolve_device(device)
    entry = None if cache_dir is None else _proxy_entry(Path(cache_dir), images, labels, seed, epochs, models, device)
    if entry is not None and (kept := _read_proxy(*entry, len(labels), epochs, models)) is not None:
        log.info(f"proxy scores read from {entry[0]} (trained in {kept.seconds:.0f} s)")
        return kept
    scores = _train_proxy(images, labels, num_classes, seed, epochs, models, device, show_progress)
    if entry is not None:
        try:
            save_tensors({"features": scores.features, "el2n": scores.el2n, "forgetting": scores.forgetting},
                         entry[0], {"format": PROXY_FORMAT, "key": entry[1], "seconds": scores.seconds})
        except KitFileError as e:  # a cache that cannot be written only costs time
            log.warning(f"proxy scores not kept: {e}")
    return scores


def _proxy_entry(cache_dir: Path, images: torch.Tensor, labels: torch.Tensor, seed: int, epochs: int, models: int,
                 device: torch.device) -> tuple[Path, str]:
    """Where a proxy's scores are kept, and the key that must match: the pool's content, the seed, the budget and
    the kind of device (whose arithmetic shapes the bytes)."""
    key = hashlib.sha256(json.dumps({"format": PROXY_FORMAT, "pool": data_fingerprint(images, labels), "seed": seed,
                                     "epochs": epochs, "models": models, "device": device.type},
                                    sort_keys=True).encode()).hexdigest()
    return cache_dir / f"proxy-{key[:16]}.safetensors", key


def _read_proxy(path: Path, key: str, count: int, epochs: int, models: int) -> ProxyScores | None:
    """The kept scores at ``path`` when they are this key's and whole; anything else only means training."""
    try:
        tensors, meta = load_tensors(path)
    except KitFileError:
        return None
    features, el2n_, forgetting = (tensors.get(k) for k in ("features", "el2n", "forgetting"))
    if meta.get("format") != PROXY_FORMAT or meta.get("key") != key or features is None or el2n_ is None \
            or forgetting is None or len(features) != count or el2n_.shape != (count,) \
            or forgetting.shape != (count,) or not bool(torch.isfinite(features).all() & torch.isfinite(el2n_).all()):
        return None
    return ProxyScores(features.float(), el2n_.float(), forgetting.long(), epochs, models,
                       float(meta.get("seconds", 0.0)), str(path))


def _train_proxy(images: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int, epochs: int, models: int,
                 device: torch.device, show_progress: bool) -> ProxyScores:
    start = time.perf_counter()
    config = ModelConfig(num_classes=num_classes, image_size=images.shape[-1], channels=images.shape[1])
    pool, targets = images.to(device, torch.float32), labels.to(device).long()
    total_el2n = torch.zeros(len(labels), dtype=torch.float64)
    forgetting = torch.zeros(len(labels), dtype=torch.long)
    features = None
    with make_progress(disable=not show_progress) as bar:
        task = bar.add_task("proxy networks", total=models * epochs, status="")
        for m, round_seed in enumerate(round_seeds(seed, models)):
            net, (on_device, on_cpu) = fresh_round(config, round_seed, device)
            looks: list[torch.Tensor] = []

            def look(epoch: int, loss: float, accuracy: float, net: torch.nn.Module = net,
                     looks: list[torch.Tensor] = looks, m: int = m) -> None:
                looks.append((predict(net, net, pool).argmax(1) == targets).cpu())
                bar.update(task, advance=1,
                           status=f"network {m + 1}/{models} epoch {epoch + 1}/{epochs} loss {loss:.3f}")

            train(net, pool, targets, epochs=epochs, generator=on_device, group_generator=on_cpu, progress=look)
            total_el2n += el2n(predict(net, net, pool), targets).cpu().double()
            forgetting += coresets.forgetting_counts(torch.stack(looks))
            features = predict(net, net.embed, pool).cpu() if features is None else features
    return ProxyScores(features, (total_el2n / models).float(), forgetting, epochs, models,
                       time.perf_counter() - start)


def pick(method: str, labels: torch.Tensor, spec: DatasetSpec, seed: int, scores: ProxyScores | None
         ) -> torch.Tensor:
    """Pool indices of IPC images per class in default order by ``method`` (``scores`` for all but random)."""
    g, ipc = generator(seed), spec.ipc
    if method == "random":  # the organizers' sample submission's draw, as indices
        return real(InitContext(spec, torch.arange(len(labels)), labels, None, None, g, torch.device("cpu")))
    if scores is None:
        raise KitValueError(f"{method}: needs the proxy's scores")

    def choose(pool: torch.Tensor) -> torch.Tensor:
        if method == "herding":
            return coresets.herding(scores.features[pool], ipc)
        if method == "kcenter":
            return coresets.kcenter(scores.features[pool], ipc, g)
        score, how = method.split("_")
        return coresets.ranked((scores.el2n if score == "el2n" else scores.forgetting)[pool], ipc, how, g)

    return coresets.per_class(labels, spec.num_classes, ipc, g, choose)


def select(method: str, images: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec, *, seed: int,
           scores: ProxyScores | None = None, score_epochs: int = SCORE_EPOCHS, score_models: int = SCORE_MODELS,
           device: torch.device | str | None = None, cache_dir: str | Path | None = None) -> Selection:
    """``method``'s IPC images per class from the pool (``images``, ``labels``), in default order, timed; the
    proxy is trained here (or read from ``cache_dir``) unless ``scores`` (one proxy serves every method) are
    given."""
    check_method(method, epochs=score_epochs, models=score_models)
    start = time.perf_counter()
    if method != "random" and scores is None:
        scores = proxy(images, labels, spec.num_classes, seed=seed, epochs=score_epochs, models=score_models,
                       device=device, cache_dir=cache_dir)
    chosen = pick(method, labels, spec, seed, scores)
    parameters = {} if method == "random" else {
        "scores": f"challenge ConvNet trained the scorer's way on the {len(labels)}-image training pool",
        "score_epochs": scores.epochs, "score_models": scores.models,
        "proxy_seconds": round(scores.seconds, 3), **({"proxy_read_from": scores.kept} if scores.kept else {}),
        **({"band_skip": coresets.BAND_SKIP} if method.endswith("_band") else {})}
    return Selection(images[chosen].clone(), method, seed, parameters, time.perf_counter() - start)


def expert_select(method: str, images: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec, *, seed: int,
                  experts_dir: str | Path, device: torch.device | str | None = None) -> Selection:
    """``method``'s pick with the features and scores of the store's experts instead of a proxy: the init part
    of that name, run on the whole training split (timed, the store read included)."""
    check_method(method)
    start, store = time.perf_counter(), ExpertStore(experts_dir)
    complete = store.complete()
    if not complete:
        raise KitFileError(experts_dir, "no complete experts in this store; train them with `ddkit experts` first")
    model = complete[0].model_config
    ctx = InitContext(spec, images, labels, store.trajectories(spec, model, 1), model, generator(seed),
                      resolve_device(device))
    chosen = REGISTRY["init"]["real" if method == "random" else method].impl(ctx)
    return Selection(chosen, method, seed, {} if method == "random" else {
        "scores": f"the {len(complete)} complete experts of {experts_dir}", "experts": str(experts_dir)},
        time.perf_counter() - start)


def describe(method: str) -> str:
    """The method in words, for the manifest and the compare table."""
    if method in ("random", "herding", "kcenter"):
        return {"random": "random real training images", "herding": "herding in the proxy's features",
                "kcenter": "k-center greedy in the proxy's features"}[method]
    score, pick = method.split("_")
    return (f"{dict(easy='easiest', hard='hardest', band='band past the easiest')[pick]} by "
            f"{'EL2N' if score == 'el2n' else 'forgetting events'}")
