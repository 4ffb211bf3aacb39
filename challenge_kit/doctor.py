"""``ddkit doctor``: what a run on this machine will meet, found in seconds rather than an hour into a run.

One row per thing a run depends on: the versions (Python, torch and its CUDA, the kit), each device and its
memory, bfloat16 in hardware and a compiler for ``torch.compile`` (the fast scorer's two speed-ups), the decoded-data
cache and its free space, each data root given and the layout found in it, and every shipped recipe in every
profile. A row is ``ok``, ``warn`` (a run works, slower or not as the user may expect) or ``fail`` (a run would
stop on it); any ``fail`` makes the exit code non-zero. Nothing is computed or compiled: it reads what is there.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from challenge_kit import installed_version
from challenge_kit.core.devices import device_memory
from challenge_kit.core.errors import BAD_INPUT, DONE, KitError
from challenge_kit.core.progress import binary_size
from challenge_kit.data import data_layout, default_cache_dir, detect_dataset
from challenge_kit.recipes import RECIPE_DIR, load_recipe, method_names, read_toml
from evaluator.fast import COMPILERS, can_compile, native_bfloat16

OK, WARN, FAIL = "ok", "warn", "fail"
CACHE_NEEDS = int(1.6 * 2**30)  # both datasets' splits decoded (uint8): Tiny ImageNet 1.35 GB, CIFAR-100 0.18 GB


@dataclass
class Row:
    name: str
    status: str
    found: str


@dataclass
class Checkup:
    rows: list[Row]

    @property
    def ok(self) -> bool:
        return all(r.status != FAIL for r in self.rows)

    @property
    def exit_code(self) -> int:
        return DONE if self.ok else BAD_INPUT

    def to_dict(self) -> dict:
        return {"ok": self.ok, "exit_code": self.exit_code, "checks": [asdict(r) for r in self.rows]}


def versions() -> list[Row]:
    cuda = torch.version.cuda
    return [Row("Python", OK, f"{platform.python_version()} ({platform.python_implementation()})"),
            Row("torch", OK, torch.__version__),
            Row("CUDA", OK, f"{cuda} (torch's build)" if cuda else "none: a CPU build of torch"),
            Row("ddkit", OK, f"{installed_version()} ({Path(__file__).resolve().parent})")]


def devices() -> list[Row]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = device_memory(torch.device("cpu"))
    rows = [Row("cpu", OK, f"{cores} cores, {binary_size(memory) if memory else 'memory unknown'}; torch runs "
                           f"{torch.get_num_threads()} threads")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            rows.append(Row(f"cuda:{i}", OK, f"{torch.cuda.get_device_name(i)}, "
                                             f"{binary_size(device_memory(torch.device('cuda', i)))}"))
    else:
        why = "no GPU visible" if torch.version.cuda else "this torch is a CPU build"
        rows.append(Row("cuda", WARN, f"none ({why}): the full profile is a GPU job; on a CPU run --profile mini or "
                                      "quick (the README's CPU path)"))
    return rows


def speed_ups(device: torch.device) -> list[Row]:
    bf16 = native_bfloat16(device)
    rows = [Row(f"bfloat16 ({device})", OK if bf16 else WARN,
                "in hardware: the fast scorer's forward runs in bfloat16" if bf16 else
                "not in hardware: the fast scorer stays in float32 (slower, same decisions)")]
    if can_compile(device):
        compiler = os.environ.get("CXX") or next(c for c in COMPILERS if shutil.which(c))
        rows.append(Row("torch.compile", OK, f"C++ compiler {shutil.which(compiler) or compiler}: the fast scorer "
                                             "is compiled"))
    else:
        why = "off (DDKIT_NO_COMPILE is set)" if os.environ.get("DDKIT_NO_COMPILE") else \
            f"no C++ compiler ({', '.join(COMPILERS)} or $CXX)"
        rows.append(Row("torch.compile", WARN, f"{why}: the fast scorer runs uncompiled, about 2x slower"))
    return rows


def existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def cache(cache_dir: str | Path | None) -> Row:
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    base = existing_parent(folder)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        return Row("cache", FAIL, f"{folder}: cannot be written ({base} is not a writable folder); pass "
                                  "--cache-dir DIR")
    free = shutil.disk_usage(base).free
    state = "exists" if folder.is_dir() else "will be made"
    found = f"{folder} ({state}), {binary_size(free)} free"
    if free < CACHE_NEEDS:
        return Row("cache", WARN, f"{found}: both datasets decoded take about {binary_size(CACHE_NEEDS)}")
    return Row("cache", OK, found)


def data_root(root: str) -> Row:
    name = f"data {root}"
    try:
        if not Path(root).is_dir():
            return Row(name, FAIL, "not found")
        return Row(name, OK, data_layout(detect_dataset(root), root).describe())
    except KitError as e:
        return Row(name, FAIL, str(e))


def recipes(recipe_dir: Path = RECIPE_DIR) -> list[Row]:
    """Every shipped recipe in every profile of every dataset: each load as a run would load it."""
    datasets, methods = sorted(p.stem for p in recipe_dir.glob("*.toml")), method_names(recipe_dir)
    loads, failed = 0, []
    for dataset in datasets:
        for profile in ["full", *sorted(read_toml(recipe_dir / f"{dataset}.toml").get("profiles", {}))]:
            for name in [dataset, *methods]:
                loads += 1
                try:
                    load_recipe(name, profile, dataset=dataset, recipe_dir=recipe_dir)
                except KitError as e:
                    failed.append(Row(f"recipe {name}", FAIL, f"{dataset} profile {profile}: {e}"))
    return failed or [Row("recipes", OK, f"{len(datasets) + len(methods)} shipped recipes load in every profile "
                                         f"({loads} combinations, from {recipe_dir})")]


def checkup(data_roots: list[str] = (), cache_dir: str | Path | None = None,
            recipe_dir: Path = RECIPE_DIR) -> Checkup:
    """The machine, its data and the shipped recipes, as a run would meet them."""
    rows = versions() + devices()
    for device in [torch.device("cpu"), *([torch.device("cuda")] if torch.cuda.is_available() else [])]:
        rows += speed_ups(device)
    rows.append(cache(cache_dir))
    rows += [data_root(root) for root in data_roots]
    return Checkup(rows + recipes(recipe_dir))
