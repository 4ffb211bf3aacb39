"""``ddkit compare``: is this set better than that one, and than random real images, at the budget spent?

A scorer round moves by 0.01-0.015 with its seed on small sets, so one score per file cannot tell two sets
apart. Here every set is trained with the challenge scorer's recipe (default-order hard labels, whatever labels a
research set carries) on the same round seeds, so the rounds pair up and their differences shed the seed's noise.
Each round's score is kept in the output folder as it comes: an interrupted compare, a rerun, or one asking for
more rounds scores only the (set, round) pairs it lacks. Baselines join the table (random real training images
drawn like the organizers' sample submission, a coreset of real images, or a run's initialization), with every
set's gain over them: the improvement over random of DD-Ranking (Li et al., 2025), under the scorer's recipe.
Other networks (``--arch``) train every set with the scorer's recipe otherwise unchanged, each its own table,
labelled as not the challenge's network: the official score is the challenge ConvNet's alone. The file is one job,
sets and baselines in, paired rounds out, kept whole (past 300 lines) so that what keys a cached round and what
the rows report are read together.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from challenge_kit.core.contract import ARCHITECTURES, CHALLENGE_NET, DatasetSpec, default_labels
from challenge_kit.core.devices import resolve_device
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.core.folders import run_lock
from challenge_kit.core.progress import make_progress
from challenge_kit.core.reading import load_torch
from challenge_kit.core.seeds import round_seeds, rounds_problem
from challenge_kit.core.storage import save_json
from challenge_kit.core.submission import MANIFEST, ScoringInput, load_inputs, read_manifest
from challenge_kit.coresets import SCORE_EPOCHS, SCORE_MODELS, describe, proxy, select
from challenge_kit.data import default_cache_dir, load_split
from challenge_kit.experts.store import data_fingerprint
from challenge_kit.parts.catalogue import CORESETS
from challenge_kit.pipeline import RUN_SUBDIR
from challenge_kit.plots import means_and_differences
from challenge_kit.runs import CHECKPOINT
from challenge_kit.stats import TELLS, judged, mean_se
from evaluator.fast import FAITHFUL, FAST, Arithmetic, arithmetic
from evaluator.scorer import Progress, test_accuracy, train_rounds

log = logging.getLogger(__name__)
ROUNDS_FILE = "rounds.json"  # every (set, round) scored so far: the resume cache
RESULT = "compare.json"
CHART = "compare.png"
BASELINES = ("random", "init", *CORESETS)
RANDOM, INIT = "random real images", "initialization"
OTHER_NET = "not the challenge's network: not the official score"


def baseline_name(kind: str) -> str:
    """What the table calls a baseline."""
    return {"random": RANDOM, "init": INIT}.get(kind, f"{kind} coreset")
LABELS_NOTE = "its own labels ignored: scored with default-order hard labels, as the scorer does"


@dataclass
class Entry:
    """One set of the comparison: its images (checked against the spec), where they came from."""

    name: str
    images: torch.Tensor
    source: str
    baseline: bool = False
    note: str = ""


def export_file(path: Path) -> Path:
    """The set a path names: a make-submission folder's exported file (its manifest says which), else the path."""
    if not path.is_dir():
        return path
    manifest = read_manifest(path / MANIFEST)
    name = (manifest or {}).get("file")
    if not isinstance(name, str) or Path(name).name != name or not (path / name).is_file():
        raise KitFileError(path, f"not a make-submission folder: no {MANIFEST} naming an exported file in it")
    return path / name


def _note(inputs: ScoringInput) -> str:
    """What the table says of a kit set whose labels the scorer will not use."""
    spec, labels = inputs.spec, inputs.labels
    if labels is None or (labels.dim() == 1 and torch.equal(labels, default_labels(spec.num_classes, spec.ipc))):
        return ""
    return LABELS_NOTE


def short_labels(paths: list[str]) -> list[str]:
    """The shortest part of each path that tells it from the others: the path less the folders and names all of
    them share at either end (``runs/a/tinyimagenet.pt``, ``runs/b/tinyimagenet.pt``: ``a``, ``b``), at least its
    last part each."""
    parts = [Path(p).parts for p in paths]
    keep = min(len(p) for p in parts) - 1  # what may be dropped from each while one part is left
    head = next((k for k in range(keep) if len({p[k] for p in parts}) > 1), keep)
    tail = next((k for k in range(keep - head) if len({p[-1 - k] for p in parts}) > 1), keep - head)
    return [str(Path(*p[head:len(p) - tail])) for p in parts]


def set_names(paths: list[str], labels: list[str] | None) -> list[str]:
    """The names the table and the figure give the sets: ``labels`` as given, else ``short_labels``; a path
    given twice is numbered."""
    if labels is not None and len(labels) != len(paths):
        raise KitValueError(f"--label: {len(labels)} given for {len(paths)} sets; give one per set, in order")
    names = list(labels) if labels is not None else short_labels(paths)
    taken = {baseline_name(kind) for kind in BASELINES}
    if labels is not None and (clash := [n for n in names if names.count(n) > 1 or n in taken]):
        raise KitValueError(f"--label {clash[0]}: names one set only, and not a baseline ({RANDOM}, {INIT}, "
                            "<method> coreset)")
    return [n if n not in names[:i] else f"{n} ({i + 1})" for i, n in enumerate(names)]


def load_sets(paths: list[str], reference: str | Path, dataset: str | None = None, labels: list[str] | None = None,
              ) -> tuple[list[Entry], DatasetSpec, tuple[torch.Tensor, torch.Tensor]]:
    """The sets to compare (.pt, make-submission folder, kit .safetensors), each named (``set_names``), their
    spec and the test split."""
    entries: list[Entry] = []
    first: ScoringInput | None = None
    for path, name in zip(paths, set_names(paths, labels), strict=True):
        inputs = load_inputs(export_file(Path(path)), reference, dataset)
        if first is not None and inputs.spec.shape != first.spec.shape:
            raise KitFileError(path, f"is a {inputs.spec.describe()} set, the first is {first.spec.describe()}: "
                                     "compare sets of one dataset")
        first = first or inputs
        entries.append(Entry(name, inputs.images.float(), str(path), note=_note(inputs)))
    if first is None:
        raise KitValueError("give at least one set to compare")
    return entries, first.spec, (first.test_images, first.test_labels)


def init_images(folder: str | Path) -> torch.Tensor:
    """The set a make-submission run started from: iteration 0 of its distillation checkpoint."""
    path = Path(folder) / RUN_SUBDIR / CHECKPOINT
    if not path.is_file():
        raise KitFileError(path, "no distillation checkpoint here: --baseline init needs a make-submission folder")
    saved = load_torch(path)
    init = (saved.get("state") or {}).get("init") if isinstance(saved, dict) else None
    if not isinstance(init, dict) or not isinstance(init.get("images"), torch.Tensor):
        raise KitFileError(path, "holds no initialization (not a ddkit distillation checkpoint)")
    return init["images"].detach().float()


def baseline_entries(kinds: list[str], paths: list[str], spec: DatasetSpec, *, data_root: str | Path | None,
                     seed: int, cache_dir: str | Path | None = None, score_epochs: int = SCORE_EPOCHS,
                     score_models: int = SCORE_MODELS, device: torch.device | str | None = None,
                     names: list[str] | None = None) -> list[Entry]:
    """``random``: IPC random real training images per class (``ddkit baseline --seed SEED``'s set); a coreset
    method: ``ddkit baseline --method METHOD --seed SEED``'s set (one proxy for them all); ``init``: the
    initialization of every set that is a make-submission folder (one row per distinct start)."""
    out, pool, scores = [], None, None
    for kind in dict.fromkeys(kinds):
        if kind == "init":
            out += init_entries(paths, names or paths)
            continue
        if pool is None:
            images, labels, train_spec = load_split(spec.name, data_root, "train", cache_dir=cache_dir)
            if train_spec.num_classes != spec.num_classes:
                raise KitFileError(data_root, f"its training split is {train_spec.describe()}, the sets are "
                                              f"{spec.describe()}")
            pool = images, labels
        if kind != "random" and scores is None:
            scores = proxy(*pool, spec.num_classes, seed=seed, epochs=score_epochs, models=score_models,
                           device=device, cache_dir=cache_dir or default_cache_dir())
        chosen = select(kind, *pool, spec, seed=seed, scores=scores)
        out.append(Entry(baseline_name(kind), chosen.images, f"{data_root} training split: {describe(kind)}, "
                         f"{spec.ipc} per class, seed {seed}", baseline=True))
    return out


def init_entries(paths: list[str], names: list[str]) -> list[Entry]:
    """The starts of the make-submission folders among the sets: one is "initialization"; several are named by
    their sets, and folders that started from the same images share a row, so each run is read against its own."""
    folders = [(p, n) for p, n in zip(paths, names, strict=True) if (Path(p) / RUN_SUBDIR / CHECKPOINT).is_file()]
    if not folders:
        raise KitValueError("--baseline init: none of the sets is a make-submission folder (its "
                            f"{RUN_SUBDIR}/{CHECKPOINT} holds the initialization)")
    starts: list[tuple[torch.Tensor, list[str], list[str]]] = []
    for folder, name in folders:
        images = init_images(folder)
        same = next((s for s in starts if torch.equal(s[0], images)), None)
        if same is None:
            starts.append((images, [folder], [name]))
        else:
            same[1].append(folder)
            same[2].append(name)
    return [Entry(INIT if len(starts) == 1 else f"{INIT} of {' and '.join(set_names)}", images,
                  f"{' and '.join(where)}: iteration 0 of the distillation", baseline=True)
            for images, where, set_names in starts]


def check_baselines(kinds: list[str], data_root: str | None) -> None:
    """Refuse a misspelt baseline, or a real-image one with no training images to draw from, before any work."""
    wrong = [k for k in kinds if k not in BASELINES]
    if wrong:
        raise KitValueError(f"--baseline {wrong[0]}: choose {', '.join(BASELINES)}")
    if (real := next((k for k in kinds if k != "init"), None)) is not None and data_root is None:
        raise KitValueError(f"--baseline {real}: needs --data-root (the real training images it picks from)")


def check_archs(archs: list[str]) -> None:
    wrong = [a for a in archs if a not in ARCHITECTURES]
    if wrong:
        raise KitValueError(f"--arch {wrong[0]}: choose {', '.join(ARCHITECTURES)}")


def _read_rounds(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KitFileError(path, f"not readable JSON ({e}); remove it to score every round again") from None


def round_accuracies(images: torch.Tensor, labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
                     *, num_classes: int, seeds: list[int], epochs: int, device: torch.device,
                     progress: Progress | None, how: Arithmetic, arch: str = CHALLENGE_NET) -> list[float]:
    """The scorer's rounds of ``seeds`` on one set (on network ``arch``), each tested: their accuracies."""
    nets = train_rounds(images, labels, seeds, num_classes=num_classes, epochs=epochs, device=device,
                        progress=progress, how=how, arch=arch)
    test_images, test_labels = test_images.to(device, torch.float32), test_labels.to(device).long()
    return [test_accuracy(net, test_images, test_labels) for net in nets]


def score_rounds(entries: list[Entry], spec: DatasetSpec, test: tuple[torch.Tensor, torch.Tensor], *,
                 seeds: list[int], epochs: int, device: torch.device, cache: Path,
                 show_progress: bool = True, how: Arithmetic = Arithmetic(), arch: str = CHALLENGE_NET
                 ) -> dict[str, list[float]]:
    """Each set's accuracy on every seed, training only the (set, seed) pairs ``cache`` lacks.

    Rounds are keyed by the set's and test split's content, the epochs, the device, the scorer's arithmetic
    (when not the faithful one), the network (when not the challenge ConvNet) and the seed itself (a round's seed
    does not depend on how many rounds are asked for), so identical sets are trained once and nothing scored
    under other conditions is reused.
    Round-major order, in blocks of the rounds the arithmetic trains at once (one on a CPU): an interrupted
    compare leaves every set with the same rounds, still paired. The cache is rewritten (atomically) after
    every block.
    """
    done = _read_rounds(cache)
    labels = default_labels(spec.num_classes, spec.ipc)
    test_key = data_fingerprint(*test)[:16]
    arith = "" if how.mode == FAITHFUL else (f":{how.mode} {how.precision}{' compiled' if how.compiled else ''}"
                                         f"{f' stacked {how.stacked}' if how.stacked > 1 else ''}")
    net = "" if arch == CHALLENGE_NET else f":{arch}"
    keys = {e.name: f"{data_fingerprint(e.images, labels)[:16]}:test {test_key}:{epochs} epochs:{device}{arith}"
                    f"{net}" for e in entries}
    blocks = [range(b, min(b + how.stacked, len(seeds))) for b in range(0, len(seeds), how.stacked)]
    todo = list({(keys[e.name], block.start): (missing, e) for block in blocks for e in entries
                 if (missing := [r for r in block if str(seeds[r]) not in done.get(keys[e.name], {})])}.values())
    with make_progress(disable=not show_progress) as bar:
        task = bar.add_task(f"scoring {sum(len(rs) for rs, _ in todo)} rounds",
                            total=sum(len(rs) for rs, _ in todo) * epochs, status="")
        for rs, entry in todo:
            name = f"{entry.name} on {arch}" if net else entry.name
            which = f"{name} round {rs[0] + 1}" + (f"-{rs[-1] + 1}" if len(rs) > 1 else "") + f"/{len(seeds)}"

            def report(epoch: int, loss: float, acc: float, which: str = which, k: int = len(rs)) -> None:
                bar.update(task, advance=k, status=f"{which} loss {loss:.3f}")

            tick = time.perf_counter()
            accuracies = round_accuracies(entry.images, labels, *test, num_classes=spec.num_classes,
                                          seeds=[seeds[r] for r in rs], epochs=epochs, device=device,
                                          progress=report, how=how, arch=arch)
            seconds = round((time.perf_counter() - tick) / len(rs), 1)
            for r, acc in zip(rs, accuracies, strict=True):
                done.setdefault(keys[entry.name], {})[str(seeds[r])] = {"accuracy": acc, "seconds": seconds}
                if show_progress:
                    log.info(f"{name} round {r + 1}: {acc:.4f}")
            save_json(done, cache)
    return {e.name: [done[keys[e.name]][str(s)]["accuracy"] for s in seeds] for e in entries}


def summarize(entries: list[Entry], scores: dict[str, list[float]]) -> list[dict]:
    """One row per set: its rounds, mean +- s.e., the paired difference to the first set and the gain over
    every baseline, each judged at ``TELLS`` standard errors."""
    first, baselines = entries[0].name, [e.name for e in entries if e.baseline]
    rows = []
    for e in entries:
        mean, se = mean_se(scores[e.name])
        rows.append({"name": e.name, "source": e.source, "baseline": e.baseline, "note": e.note,
                     "rounds": scores[e.name], "mean": mean, "se": se,
                     "difference": None if e.name == first else judged(scores[e.name], scores[first]),
                     "gains": {b: judged(scores[e.name], scores[b]) for b in baselines if b != e.name}})
    return rows


def chart(result: dict, path: Path) -> Path:
    """Means with their standard errors beside the paired differences with 2 s.e.: each set's to the first, then
    the gains over the baselines not drawn yet (the first set's gain is its baseline's difference, negated); each
    other network's the same, its names marked with the network."""
    means, diffs = [], []
    for arch, rows in [(None, result["sets"]), *((a["arch"], a["sets"]) for a in result.get("architectures", []))]:
        mark = "" if arch is None else f" [{arch}]"
        order = {r["name"]: i for i, r in enumerate(rows)}
        means += [(r["name"] + mark, r["mean"], r["se"]) for r in rows]
        diffs += [(f"{r['name']} - {rows[0]['name']}{mark}", r["difference"]) for r in rows[1:]]
        diffs += [(f"{r['name']} - {b}{mark}", gain) for r in rows[1:] for b, gain in r["gains"].items()
                  if order[b] > order[r["name"]]]  # one direction of each pair
    return means_and_differences(
        path, f"{result['dataset']}: {'fast ' if result['scorer']['mode'] == FAST else ''}scorer recipe, "
              f"{result['epochs']} epochs x {result['rounds']} paired rounds"
              + ("\n[network]: trained on that network, not the official score" if result.get("architectures") else ""),
        means, [(name, d["mean"], TELLS * d["se"], d["verdict"]) for name, d in diffs], TELLS)


def check_budget(rounds: int, epochs: int) -> None:
    """The scoring budget checked before any set is read: the same bounds as ``ddkit evaluate``'s."""
    if rounds < 1 or epochs < 1:
        raise KitValueError("--rounds and --epochs must be at least 1")
    if (problem := rounds_problem(rounds)) is not None:
        raise KitValueError(f"--rounds: {problem}")


def compare(entries: list[Entry], spec: DatasetSpec, test: tuple[torch.Tensor, torch.Tensor], out: str | Path, *,
            rounds: int, epochs: int, seed: int, device: str | torch.device | None = None,
            show_progress: bool = True, extra: dict | None = None, mode: str = FAITHFUL,
            archs: list[str] | None = None) -> dict:
    """Score every set on the same round seeds (resuming from ``out``), write compare.json and compare.png.
    ``sets`` are the challenge ConvNet's rows; each of ``archs`` besides it adds its own rows under
    ``architectures``, trained on the same seeds and labelled as not the official network."""
    check_budget(rounds, epochs)
    others = [a for a in dict.fromkeys(archs or []) if a != CHALLENGE_NET]
    check_archs(others)
    out, device = Path(out), resolve_device(device)
    seeds, how = round_seeds(seed, rounds), arithmetic(mode, device)
    with run_lock(out):
        scores, *other_scores = [score_rounds(entries, spec, test, seeds=seeds, epochs=epochs, device=device,
                                              cache=out / ROUNDS_FILE, show_progress=show_progress, how=how,
                                              arch=arch) for arch in (CHALLENGE_NET, *others)]
        result = {"dataset": spec.describe(), "spec": spec.to_dict(), "epochs": epochs, "rounds": rounds,
                  "seed": seed, "seeds": seeds, "device": str(device), "test_images": int(test[0].shape[0]),
                  "scorer": how.to_dict(),
                  "labels": "default order (image i is class i // ipc): the scorer's, for every set",
                  "tells": TELLS, "sets": summarize(entries, scores), "arch": CHALLENGE_NET,
                  "architectures": [{"arch": arch, "official": False, "label": f"{arch}: {OTHER_NET}",
                                     "sets": summarize(entries, got)} for arch, got in zip(others, other_scores,
                                                                                          strict=True)],
                  **(extra or {})}
        save_json(result, out / RESULT)
        chart(result, out / CHART)
    return result
