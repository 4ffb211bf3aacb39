"""The M-DATM distillation run: initialization, the outer loop, model selection, checkpoint and resume.

The math of one iteration lives in ``matching``; this module owns the state around it. Every source
of randomness is an explicit generator whose state goes into the checkpoint, so a resumed run
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from challenge_kit import experts as expert_store
from challenge_kit.contract import DatasetSpec, default_labels
from challenge_kit.experts import sgd_step
from challenge_kit.matching import GRAD_MODES, match, plan_inner_steps
from challenge_kit.models import FunctionalConvNet, ModelConfig
from challenge_kit.progress import console, make_progress
from challenge_kit.recipes import DistillConfig, EvalConfig, Recipe
from challenge_kit.storage import DistilledArtifact, KitFileError, load_rows, load_torch, save_json, save_torch

INITS = ("real_correct", "real", "noise")
CHECKPOINT = "checkpoint.pt"
BEST = "best.safetensors"
SUMMARY = "run.json"


@dataclass
class Trajectories:
    """The expert store as the matching loop needs it: two snapshots of one expert at a time."""

    paths: list[Path]
    epochs: int

    @classmethod
    def open(cls, root: str | Path, spec: DatasetSpec, model: ModelConfig, needed_epochs: int) -> Trajectories:
        paths, epochs = [], None
        for path in expert_store.complete_experts(root):
            expert = expert_store.read_expert(path, snapshots=False)
            if expert.model_config != model or expert.spec.num_classes != spec.num_classes \
                    or expert.spec.image_size != spec.image_size:
                raise KitFileError(path, f"expert was trained for {expert.spec.describe()} with {expert.model_config}, "
                                         f"not for {spec.describe()}")
            paths.append(path)
            epochs = expert.epochs if epochs is None else min(epochs, expert.epochs)
        if not paths:
            raise KitFileError(root, "no complete experts in this store; train them with `ddkit experts` first")
        if epochs < needed_epochs:
            raise KitFileError(root, f"experts have {epochs} epochs, matching needs max_start_epoch + expert_epochs "
                                     f"= {needed_epochs}")
        return cls(paths, epochs)

    def pair(self, expert: int, start: int, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = load_rows(self.paths[expert], "snapshots", [start, start + span])
        return rows[0], rows[1]

    def last(self, expert: int = 0) -> torch.Tensor:
        return load_rows(self.paths[expert], "snapshots", [self.epochs])[0]


def expert_classifier(trajectories: Trajectories, model: ModelConfig, device: torch.device):
    """The first expert's last snapshot as a classifier (DATM picks initial images it gets right)."""
    net = FunctionalConvNet(model, device=device)
    theta = trajectories.last().to(device)
    return lambda x: net(theta, x.to(device))


def select_real(images: torch.Tensor, labels: torch.Tensor, spec: DatasetSpec, how: str,
                generator: torch.Generator, classifier=None) -> torch.Tensor:
    """IPC real images per class in default order; ``real_correct`` prefers ones ``classifier`` gets right."""
    chosen = []
    for c in range(spec.num_classes):
        pool = torch.nonzero(labels == c).flatten()
        if len(pool) == 0:
            raise ValueError(f"class {c} has no real images to initialize from")
        pool = pool[torch.randperm(len(pool), generator=generator)]
        if how == "real_correct" and classifier is not None:
            with torch.no_grad():
                right = classifier(images[pool]).argmax(1).cpu() == c
            pool = torch.cat([pool[right], pool[~right]])
        if len(pool) < spec.ipc:
            pool = pool[torch.randint(len(pool), (spec.ipc,), generator=generator)]
        chosen.append(pool[: spec.ipc])
    return images[torch.cat(chosen)].clone()


def initial_images(how: str, spec: DatasetSpec, real_images: torch.Tensor, real_labels: torch.Tensor,
                   generator: torch.Generator, classifier=None) -> torch.Tensor:
    if how == "noise":
        return torch.randn(spec.shape, generator=generator)
    if how in ("real", "real_correct"):
        return select_real(real_images, real_labels, spec, how, generator, classifier)
    raise ValueError(f"unknown init {how!r}; expected one of {INITS}")


@dataclass
class DistillState:
    """Everything a resumed run needs; saved as plain tensors and containers (weights_only loadable)."""

    iteration: int
    images: torch.Tensor
    lr: torch.Tensor
    upper: int
    rng: torch.Tensor
    aug_rng: torch.Tensor
    image_momentum: torch.Tensor | None = None
    lr_momentum: torch.Tensor | None = None
    skipped: int = 0
    best_acc: float = -1.0
    best_iteration: int = -1
    best_images: torch.Tensor | None = None
    best_lr: float = 0.0
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _evaluate(images, spec, test_images, test_labels, config: EvalConfig, iteration: int, device) -> dict:
    from evaluator.scorer import evaluate_images

    result = evaluate_images(images, spec, test_images, test_labels, rounds=config.rounds, epochs=config.epochs,
                             seed=config.seed + iteration, device=device, show_progress=False)
    return {"iteration": iteration, "mean": result["mean"], "rounds": result["rounds"]}


def distill(recipe: Recipe, spec: DatasetSpec, experts_dir: str | Path, run_dir: str | Path, *,
            real_images: torch.Tensor, real_labels: torch.Tensor, test_images: torch.Tensor | None,
            test_labels: torch.Tensor | None, device: str | torch.device = "cpu", resume: bool = False,
            show_progress: bool = True) -> DistillState:
    """Run (or resume) M-DATM; returns the final state. ``run_dir`` holds the checkpoint and the best set."""
    cfg: DistillConfig = recipe.distill
    if cfg.grad not in GRAD_MODES:
        raise ValueError(f"distill.grad must be one of {GRAD_MODES}, got {cfg.grad!r}")
    device = torch.device(device)
    run_dir = Path(run_dir)
    model = ModelConfig.for_spec(spec)
    net = FunctionalConvNet(model, device=device)
    trajectories = Trajectories.open(experts_dir, spec, model, cfg.max_start_epoch + cfg.expert_epochs)
    labels = default_labels(spec.num_classes, spec.ipc, device)
    ckpt = run_dir / CHECKPOINT

    if ckpt.exists() and not resume:
        raise KitFileError(ckpt, "a run already exists here; pass --resume to continue it or choose another --out")
    if resume and ckpt.exists():
        saved = load_torch(ckpt)
        if saved.get("recipe") != recipe.to_dict() or saved.get("spec") != spec.to_dict():
            raise KitFileError(ckpt, "checkpoint was written by a different recipe or spec; resume with the same one")
        state = DistillState(**saved["state"])
        console.print(f"resuming {run_dir} at iteration {state.iteration}/{cfg.iterations}")
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        classifier = expert_classifier(trajectories, model, device) if cfg.init == "real_correct" else None
        images = initial_images(cfg.init, spec, real_images, real_labels, gen, classifier)
        state = DistillState(iteration=0, images=images.float(), lr=torch.tensor(cfg.lr_init),
                             upper=cfg.current_max_start_epoch, rng=gen.get_state(),
                             aug_rng=torch.Generator(device=device).manual_seed(cfg.seed + 1).get_state())

    gen = torch.Generator().set_state(state.rng)
    aug_gen = torch.Generator(device=device)
    aug_gen.set_state(state.aug_rng)
    images = state.images.to(device)
    lr = state.lr.to(device)
    image_buf = None if state.image_momentum is None else state.image_momentum.to(device)
    lr_buf = None if state.lr_momentum is None else state.lr_momentum.to(device)

    def checkpoint() -> None:
        state.images, state.lr = images.detach().cpu(), lr.detach().cpu()
        state.image_momentum = None if image_buf is None else image_buf.cpu()
        state.lr_momentum = None if lr_buf is None else lr_buf.cpu()
        state.rng = gen.get_state()
        state.aug_rng = aug_gen.get_state()
        save_torch({"recipe": recipe.to_dict(), "spec": spec.to_dict(), "state": state.to_dict()}, ckpt)

    def select(iteration: int) -> None:
        if test_images is None or recipe.eval.every <= 0:
            return
        result = _evaluate(images.detach(), spec, test_images, test_labels, recipe.eval, iteration, device)
        state.evals.append(result)
        if result["mean"] > state.best_acc:
            state.best_acc, state.best_iteration = result["mean"], iteration
            state.best_images, state.best_lr = images.detach().cpu().clone(), float(lr)

    smoothed = None
    with make_progress(disable=not show_progress) as progress:
        task = progress.add_task("distill", total=cfg.iterations, completed=state.iteration, status="")
        while state.iteration < cfg.iterations:
            tick = time.perf_counter()
            start_epoch = int(torch.randint(cfg.min_start_epoch, state.upper + 1, (1,), generator=gen))
            expert = int(torch.randint(len(trajectories.paths), (1,), generator=gen))
            start, target = (t.to(device) for t in trajectories.pair(expert, start_epoch, cfg.expert_epochs))
            plan = plan_inner_steps(spec.num_images, cfg.batch_syn, cfg.syn_steps, spec.image_size, device,
                                    generator=gen, aug_generator=aug_gen)
            result = match(net, images, labels, lr, start, target, plan, cfg.grad)
            loss = float(result.loss)
            if not math.isfinite(loss) or loss > cfg.threshold:
                state.skipped += 1
            else:
                images, image_buf = sgd_step(images, result.grad_images, cfg.lr_img, cfg.momentum, buf=image_buf)
                lr, lr_buf = sgd_step(lr, result.grad_lr, cfg.lr_lr, cfg.momentum, buf=lr_buf)
            state.iteration += 1
            if state.iteration % cfg.interval == 0 and state.upper < cfg.max_start_epoch:
                state.upper += 1
            state.seconds += time.perf_counter() - tick
            state.history.append({"iteration": state.iteration, "loss": loss, "lr": float(lr),
                                  "start_epoch": start_epoch, "expert": expert})
            if math.isfinite(loss):
                smoothed = loss if smoothed is None else 0.9 * smoothed + 0.1 * loss
            if recipe.eval.every > 0 and (state.iteration % recipe.eval.every == 0
                                          or state.iteration == cfg.iterations):
                select(state.iteration)
            if state.iteration % cfg.checkpoint_every == 0 or state.iteration == cfg.iterations:
                checkpoint()
            last = f"{state.evals[-1]['mean']:.3f}" if state.evals else "-"
            progress.update(task, completed=state.iteration,
                            status=f"T {state.upper} loss {smoothed or float('nan'):.4f} lr {float(lr):.5f} "
                                   f"skipped {state.skipped} eval {last}")

    if state.best_images is None:
        state.best_images, state.best_lr, state.best_iteration = images.detach().cpu(), float(lr), state.iteration
        checkpoint()
    DistilledArtifact(state.best_images, labels.cpu(), spec, lr=state.best_lr,
                      extra={"iteration": state.best_iteration, "accuracy": state.best_acc}).save(run_dir / BEST)
    save_json({"recipe": recipe.to_dict(), "spec": spec.to_dict(), "experts": [str(p) for p in trajectories.paths],
               "iterations": state.iteration, "skipped": state.skipped, "seconds": state.seconds,
               "seconds_per_iteration": state.seconds / max(1, len(state.history)),
               "best_iteration": state.best_iteration, "best_accuracy": state.best_acc, "evals": state.evals,
               "device": str(device)}, run_dir / SUMMARY)
    return state
