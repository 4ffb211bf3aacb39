"""``ddkit plan``: the bill before the work -- what a run will do, and its FLOPs, peak memory and time here.

Counts come from the recipe. FLOPs (torch's ``FlopCounterMode``: matrix products and convolutions, the work that
dominates) and peak tensor memory (a counter of live storages) come from running each stage's unit of work on the
``meta`` device, where nothing is computed, so the paper's shapes cost seconds. A distillation iteration of more
than three inner steps is counted at two and three and extended linearly: every inner step adds the same work
and memory (the first one differs: its graph is what the walk back holds at its peak). Time comes from a
short calibration of each unit on the run's device (one call per DSA group, averaged), at a small batch on a
CPU, scaled by images; each stage is timed in the arithmetic the run will use: an expert step in
``experts.arithmetic``, a matching iteration in ``distill.arithmetic``, selection's scorer step in ``eval.scorer``
(a compiled step at its own batch: compiled kernels are shape-specific, and these are the ones the run reuses). The
calibration runs ``CALIBRATION_PASSES`` times and the plan says the median with the range: on a shared machine
two plans once differed fivefold. The images counted are the user's (``data.data_layout``) when a data root is
given. ``make-submission`` opens with this plan, and stops before any work where even its fastest reading is
longer than ``LONG_RUN`` seconds. The file is longer than most: counting, calibrating and the plan's two
refusals (an iteration too big for the device, a run too long for it) all read the same stages.
"""

from __future__ import annotations

import math
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from challenge_kit import parts
from challenge_kit.arithmetic import autocast_dtype, precision_name
from challenge_kit.core import augment
from challenge_kit.core.contract import (
    BATCH_SIZE,
    EPOCHS,
    ROUNDS,
    TRAIN_PER_CLASS,
    DatasetSpec,
    default_labels,
    get_spec,
)
from challenge_kit.core.devices import device_memory
from challenge_kit.core.errors import KitValueError
from challenge_kit.core.models import ConvNet, FunctionalConvNet, ModelConfig
from challenge_kit.core.progress import binary_size
from challenge_kit.experts.training import schedule_steps, step_network
from challenge_kit.matching import InnerStep, Matching, match, plan_inner_steps
from challenge_kit.optim import sgd_step
from challenge_kit.parts import GRAD_MODES
from challenge_kit.recipes import Recipe
from evaluator.fast import FAITHFUL, arithmetic, forward, precision
from evaluator.scorer import make_optimizer

META = torch.device("meta")
CALIBRATION_PASSES = 3  # each times every DSA group once; $DDKIT_CALIBRATION_PASSES to change (the tests take 1)
LONG_RUN = 86400  # a day: make-submission stops before any work where the plan is longer, unless told to go on
CPU_CALIBRATION_IMAGES = 32  # a CPU's per-image time barely depends on the batch; an accelerator's does
COUNTED_GROUP = "rotate"  # the DSA group with the largest temporaries (an affine grid per image; scale ties)


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages alive at once while the mode is on (what an allocator must hold, less its
    rounding and caching); storages are freed when Python drops them, as on a real device."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._seen:
                    self._seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size


def count(work: Callable[[], object]) -> tuple[int, int]:
    """(FLOPs, peak bytes) of ``work`` run once; on the meta device this computes nothing."""
    live = LiveBytes()
    with FlopCounterMode(display=False) as flops, live:
        work()
    return int(flops.get_total_flops()), live.peak


@dataclass(frozen=True)
class Timing:
    """Seconds of one unit of work from the calibration's passes: the median the plan adds up, and the range."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        ordered = sorted(samples)
        return cls(ordered[0], ordered[len(ordered) // 2], ordered[-1])

    def __mul__(self, factor: float) -> Timing:
        return Timing(self.low * factor, self.median * factor, self.high * factor)


def calibration_passes() -> int:
    value = os.environ.get("DDKIT_CALIBRATION_PASSES", str(CALIBRATION_PASSES))
    if not value.isdigit() or int(value) < 1:
        raise KitValueError(f"DDKIT_CALIBRATION_PASSES: must be a whole number >= 1, got {value!r}")
    return int(value)


def timed(build: Callable[[str], Callable[[], object]], device: torch.device, passes: int | None = None) -> Timing:
    """Seconds of one call of the work ``build(group)`` makes, averaged over every DSA group (a step's cost
    depends on its group, and a run draws them uniformly: two random draws once put the same expert step at 4.6
    and 8.2 s), in ``passes`` passes (``calibration_passes``) after one warm-up call; the device is synchronized
    only around each pass."""
    passes = calibration_passes() if passes is None else passes
    works = [build(group) for group in augment.GROUPS]
    works[0]()
    samples = []
    for _ in range(passes):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for work in works:
            work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) / len(works))
    return Timing.of(samples)


def calibration_batch(batch: int, device: torch.device) -> int:
    return min(batch, CPU_CALIBRATION_IMAGES) if device.type == "cpu" else batch


def expert_step(recipe: Recipe, spec: DatasetSpec, device: torch.device, batch: int, group: str | None = None
                ) -> Callable[[], object]:
    """One expert optimizer step in the recipe's ``experts.arithmetic``: DSA (from ``group``, else a random one),
    the recipe's objective part, SGD."""
    e = recipe.experts
    model = ModelConfig.for_spec(spec)
    network, _ = step_network(model, e, device)  # in the recipe's arithmetic (float32 on the meta device)
    objective = parts.build("objective", e)
    p = torch.zeros(FunctionalConvNet(model, device=META).num_params, device=device)
    x = torch.zeros(batch, spec.channels, spec.image_size, spec.image_size, device=device)
    y = torch.arange(batch, device=device) % spec.num_classes

    def work():
        params = augment.sample(batch, spec.image_size, "cpu", group=group)
        _, grad = objective(network, p, augment.apply(x, params.to(device)), y, 0)
        return sgd_step(p, grad, e.lr, e.momentum, e.weight_decay)

    return work


def matching_iteration(recipe: Recipe, spec: DatasetSpec, device: torch.device, steps: int, batch: int,
                       mode: str, group: str | None = None) -> Callable[[], object]:
    """One distillation iteration's match (hard labels, the final snapshot) at ``steps`` inner steps in the recipe's
    ``distill.arithmetic``, every step's augmentation drawn from ``group`` if given (else at random, as a run
    draws them)."""
    net = FunctionalConvNet(ModelConfig.for_spec(spec), device=device)
    images = torch.zeros(spec.shape, device=device)
    labels = default_labels(spec.num_classes, spec.ipc, device)
    start = torch.zeros(net.num_params, device=device)
    problem = Matching(start, start, [(steps, torch.ones(net.num_params, device=device))])
    plan = [InnerStep(s.indices.to(device), augment.sample(len(s.indices), spec.image_size, device, group=group)
                      if group else s.aug.to(device))
            for s in plan_inner_steps(spec.num_images, batch, steps, spec.image_size, "cpu")]
    lr = torch.tensor(recipe.distill.lr_init, device=device)
    autocast = autocast_dtype(recipe.distill.arithmetic, device)  # None on the meta device: the work is counted
    return lambda: match(net, images, labels, lr, problem, plan, mode, autocast=autocast)


def scorer_step(spec: DatasetSpec, device: torch.device, batch: int, mode: str = FAITHFUL,
                group: str | None = None) -> Callable[[], object]:
    """One step of the scorer's training loop in ``mode``'s arithmetic: DSA (from ``group``, else a random one),
    forward, backward, SGD with momentum (on the meta device always the faithful one: the count is of the work,
    not of how it is computed)."""
    net = ConvNet(ModelConfig.for_spec(spec)).to(device)
    optimizer = make_optimizer(net.parameters(), 0.01)
    how = arithmetic(FAITHFUL if device == META else mode, device)
    step = forward(net, how)
    x = torch.zeros(batch, spec.channels, spec.image_size, spec.image_size, device=device)
    y = torch.arange(batch, device=device) % spec.num_classes

    def work():
        with precision(device, how):
            out = step(augment.apply(x, augment.sample(batch, spec.image_size, device, group=group)))
        loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return work


def iteration_count(recipe: Recipe, spec: DatasetSpec, steps: int, batch: int, mode: str) -> tuple[int, int]:
    """(FLOPs, peak bytes) of one iteration at ``steps`` inner steps: counted, or extended from two and three.

    Every step is augmented from ``COUNTED_GROUP``: with random groups the third step's temporaries differ from
    the second's and the extension multiplies the difference by N - 2 (Tiny ImageNet's N 25 then counted
    anywhere from 15.7 to 19.1 GiB); one group gives the same count every time, the largest a draw can give
    (the groups' peaks lie within 0.5% of each other). FLOPs count convolutions and matrix products only,
    which the group does not change."""
    if steps <= 3:
        return count(matching_iteration(recipe, spec, META, steps, batch, mode, COUNTED_GROUP))
    two, three = (count(matching_iteration(recipe, spec, META, k, batch, mode, COUNTED_GROUP)) for k in (2, 3))
    return tuple(a + (steps - 2) * (b - a) for a, b in zip(two, three, strict=True))


@dataclass
class Stage:
    """One line of the bill: ``units`` repetitions of one unit of work."""

    name: str
    what: str
    unit: str
    units: int
    flops: int  # per unit
    peak_bytes: int  # per unit
    timing: Timing | None = None  # per unit on the device (None: not calibrated)
    in_run: bool = True  # False: the challenge's own scoring of the export, shown for its cost, not run

    @property
    def total_flops(self) -> int:
        return self.flops * self.units

    @property
    def total(self) -> Timing | None:
        return None if self.timing is None else self.timing * self.units

    @property
    def seconds(self) -> float | None:
        return None if self.timing is None else self.timing.median

    @property
    def total_seconds(self) -> float | None:
        return None if self.timing is None else self.total.median


@dataclass
class Plan:
    recipe: Recipe
    spec: dict
    train_images: int
    device: str
    stages: list[Stage]
    matching_peak_bytes: dict[str, int] = field(default_factory=dict)  # gradient mode -> one iteration's peak
    device_bytes: int | None = None  # what the device has (device_memory)
    source: str | None = None  # where the training images were counted (None: the real download's counts)

    def too_big(self) -> str | None:
        """Why one distillation iteration in the recipe's gradient mode cannot run here, or None: its counted
        peak alone exceeds the device (allocator overhead comes on top, so passing this is no promise)."""
        d = self.recipe.distill
        need = self.matching_peak_bytes.get(d.grad)
        if self.device_bytes is None or need is None or need <= self.device_bytes:
            return None
        return (f"one distillation iteration ({d.grad} gradient, N = {d.syn_steps}, batch_syn "
                f"{d.batch_syn}) holds {binary_size(need)} of tensors at its peak, more than the "
                f"{binary_size(self.device_bytes)} this {self.device} has; lower distill.batch_syn or shard the "
                "batch over more ranks (torchrun)")

    @property
    def run(self) -> Timing | None:
        """The run's time: its stages' added up (the official score is not part of it)."""
        times = [s.total for s in self.stages if s.in_run]
        if None in times:
            return None
        return Timing(*(sum(getattr(t, k) for t in times) for k in ("low", "median", "high")))

    @property
    def run_seconds(self) -> float | None:
        return None if self.run is None else self.run.median

    def to_dict(self) -> dict:
        d = asdict(replace(self, recipe=None))
        d["recipe"] = self.recipe.to_dict()
        for stage, row in zip(self.stages, d["stages"], strict=True):
            row.update(total_flops=stage.total_flops, seconds=stage.seconds, total_seconds=stage.total_seconds,
                       total=None if stage.total is None else asdict(stage.total))
        d.update(run_seconds=self.run_seconds, run=None if self.run is None else asdict(self.run))
        return d


def selection_rounds(recipe: Recipe) -> tuple[int, int]:
    """(candidates, scorer rounds) of model selection: the initialization, every ``every``-th iteration and the
    last, ``rounds`` each, and at most two sets of ``final_rounds`` fresh rounds."""
    d, v = recipe.distill, recipe.eval
    if v.every <= 0:
        return 0, 0
    candidates = 1 + d.iterations // v.every + (1 if d.iterations % v.every else 0)
    return candidates, candidates * v.rounds + 2 * v.final_rounds


def selection_what(recipe: Recipe, candidates: int) -> str:
    """Model selection in words: which sets are scored, how, and what for."""
    d, v = recipe.distill, recipe.eval
    its = [*range(v.every, d.iterations + 1, v.every), *([d.iterations] if d.iterations % v.every else [])]
    which = f", every {v.every} iterations, the last" if len(its) > 3 else \
        f" and iteration{'s' * (len(its) > 1)} {' and '.join(map(str, its))}"
    final = f", then up to 2 x {v.final_rounds} fresh rounds for the leader" if v.final_rounds else ""
    return (f"score {candidates} candidate sets (the initialization{which}) x {v.rounds} round"
            f"{'s' * (v.rounds != 1)} of {v.epochs} epochs{final} with the {v.scorer} scorer, to choose the set "
            "exported")


def make_plan(recipe: Recipe, spec: DatasetSpec, train_images: int, device: torch.device,
              calibrate: bool = True, source: str | None = None) -> Plan:
    """The stages of ``make-submission`` for ``recipe`` on ``spec`` with ``train_images`` training images (counted
    in ``source``)."""
    e, d, v = recipe.experts, recipe.distill, recipe.eval
    n, b = d.syn_steps, d.batch_syn

    def seconds(build: Callable[[torch.device, int, str], Callable[[], object]], batch: int, scaled: bool = True
                ) -> Timing | None:
        if not calibrate:
            return None
        small = calibration_batch(batch, device) if scaled else batch
        return timed(lambda group: build(device, small, group), device) * (batch / small)

    expert_steps = e.num_experts * schedule_steps(e, train_images)
    _, how = step_network(ModelConfig.for_spec(spec), e, device)  # a compiled step is timed at its own batch
    stages = [Stage("experts", f"train {e.num_experts} experts x {e.epochs} epochs on the {train_images:,} training "
                    f"images ({e.objective.name} objective, {arithmetic_words(how['precision'], how['compiled'])})",
                    f"one step on {e.batch_size} images", expert_steps,
                    *count(expert_step(recipe, spec, META, e.batch_size)),
                    seconds(lambda dev, bs, g: expert_step(recipe, spec, dev, bs, g), e.batch_size,
                            scaled=not how["compiled"]))]

    counted = {mode: iteration_count(recipe, spec, n, b, mode) for mode in GRAD_MODES}
    peaks = {mode: peak for mode, (_, peak) in counted.items()}
    per_iteration = None
    if calibrate:
        small = calibration_batch(b, device)
        per_iteration = timed(lambda g: matching_iteration(recipe, spec, device, 2, small, d.grad, g),
                              device) * (n * b / small / 2)
    stages.append(Stage("distillation", f"{d.iterations} iterations, each {n} inner steps of a student on the "
                        f"{spec.num_images} synthetic images matched to an expert ({d.grad} gradient, "
                        f"{arithmetic_words(precision_name(autocast_dtype(d.arithmetic, device)))})",
                        f"one iteration, {n} x {b} images", d.iterations, *counted[d.grad], per_iteration))

    steps_per_round, batch = math.ceil(spec.num_images / BATCH_SIZE), min(BATCH_SIZE, spec.num_images)
    work = count(scorer_step(spec, META, batch))
    scorer = (*work, seconds(lambda dev, bs, g: scorer_step(spec, dev, bs, group=g), batch))
    candidates, rounds = selection_rounds(recipe)
    if rounds:
        how = arithmetic(v.scorer, device)  # a compiled step is timed at its own batch: its kernels are the run's
        stages.append(Stage("selection", selection_what(recipe, candidates),
                            f"one scorer step on {batch} images", rounds * v.epochs * steps_per_round, *work,
                            seconds(lambda dev, bs, g: scorer_step(spec, dev, bs, v.scorer, g), batch,
                                    scaled=not how.compiled)))
    stages.append(Stage("official score", f"not part of this run: the challenge's own scoring of the export, "
                        f"{ROUNDS} rounds x {EPOCHS} epochs (ddkit evaluate runs it)",
                        f"one scorer step on {batch} images", ROUNDS * EPOCHS * steps_per_round, *scorer,
                        in_run=False))
    return Plan(recipe, spec.to_dict(), train_images, str(device), stages, peaks, device_memory(device),
                source)


def arithmetic_words(precision: str, compiled: bool = False) -> str:
    """How a stage computes, in words: "float32", "bfloat16 autocast", ", compiled" where it is."""
    return ("float32" if precision == "float32" else f"{precision} autocast") + ", compiled" * compiled


def held_out(recipe: Recipe) -> int:
    """Images per class held out of training for model selection."""
    v = recipe.eval
    return v.holdout_per_class if v.split == "holdout" and v.holdout_per_class > 0 else 0


def train_images(recipe: Recipe, spec: DatasetSpec, per_class: int | None = None, counted: int | None = None) -> int:
    """Training images the experts and distillation see: the split less the held-out selection images. The split
    is the one ``counted`` in the user's data root, else ``per_class`` images of each class (default: the real
    download's)."""
    if counted is None:
        counted = spec.num_classes * (TRAIN_PER_CLASS[spec.name] if per_class is None else per_class)
    return counted - spec.num_classes * held_out(recipe)


def too_long(plan: Plan) -> str | None:
    """Why ``make-submission`` should not start this run here unasked, or None: even the fastest reading of the
    calibration puts it at more than ``LONG_RUN`` seconds."""
    run = plan.run
    if run is None or run.low <= LONG_RUN:
        return None
    return f"the plan puts this run at {run.low / 86400:.1f} to {run.high / 86400:.1f} days on this {plan.device}"


def plan_for(dataset: str, recipe_name: str | None = None, profile: str = "full", overrides: list[str] | None = None,
             *, data_root: str | None = None, image_folder: bool = False, classes: int | None = None,
             train_per_class: int | None = None, device: str | None = None, calibrate: bool = True) -> Plan:
    """``ddkit plan``: the recipe's plan on the images of ``data_root`` (counted, none decoded), or on the full
    download's counts (``classes``, ``train_per_class`` describe data not at hand)."""
    from challenge_kit.core.devices import usable_device
    from challenge_kit.data import data_layout
    from challenge_kit.recipes import load_recipe

    recipe = load_recipe(recipe_name or dataset, profile, overrides, dataset=dataset)
    if data_root is not None and (classes is not None or train_per_class is not None):
        raise KitValueError("--classes and --train-per-class describe data not at hand; with --data-root the "
                            "plan counts the images there")
    dev = usable_device(device)
    if data_root is not None:
        layout = data_layout(dataset, data_root, image_folder=image_folder)
        return make_plan(recipe, layout.spec, train_images(recipe, layout.spec, counted=layout.train_images), dev,
                         calibrate, source=layout.root)
    spec = get_spec(recipe.dataset)
    if classes is not None and classes != spec.num_classes:
        spec = spec.subset(classes)
    return make_plan(recipe, spec, train_images(recipe, spec, train_per_class), dev, calibrate)
