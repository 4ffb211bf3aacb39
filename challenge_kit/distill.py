"""The M-DATM distillation loop: draw an expert and a start epoch, plan the inner steps, match, update, advance T.

What differs between methods is a named part (``synthetic.Method``); what happens around an iteration
(history, selection, checkpoints, progress) is the ``monitor.Monitor``'s. Every random draw comes from two
generators whose states are checkpointed, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from challenge_kit.arithmetic import autocast_dtype
from challenge_kit.context import RunContext
from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.models import FunctionalConvNet, ModelConfig
from challenge_kit.experts.store import ExpertStore, Trajectories, data_fingerprint
from challenge_kit.matching import InnerStep, Matching, match, plan_inner_steps
from challenge_kit.monitor import Monitor
from challenge_kit.parts.kinds import LabelContext
from challenge_kit.recipes import DistillConfig, Recipe
from challenge_kit.recipes.configs import section_dict
from challenge_kit.recipes.identity import expert_settings
from challenge_kit.runs import DistillState, RunDir
from challenge_kit.selection import Selector
from challenge_kit.synthetic import Method, Synthetic, initial_state
from challenge_kit.tracking import Tracker


def draw(cfg: DistillConfig, spec: DatasetSpec, upper: int, experts: Trajectories, method: Method,
         net: FunctionalConvNet, gen: torch.Generator, aug_gen: torch.Generator, device: torch.device
         ) -> tuple[int, int, Matching, list[InnerStep]]:
    """An iteration's draws, in the order a run makes them: (expert, start epoch, what to match, the inner steps).

    1. an expert and a start epoch t in [T-, T]; 2. what the student must match: expert snapshots after t, the
    mask, per-step loss weights; 3. the inner steps: which images each step trains on, augmented how."""
    start_epoch = int(torch.randint(cfg.min_start_epoch, upper + 1, (1,), generator=gen))
    expert = int(torch.randint(experts.count, (1,), generator=gen))
    anchor, targets = method.terms(experts, expert, start_epoch, cfg.syn_steps, cfg.expert_epochs)
    start = method.perturb(anchor, net, gen)
    problem = Matching(start.to(device), anchor.to(device), [(n, t.to(device)) for n, t in targets],
                       method.mask, method.weights(start_epoch, cfg.syn_steps, cfg.max_start_epoch))
    plan = plan_inner_steps(spec.num_images, cfg.batch_syn, cfg.syn_steps, spec.image_size, device,
                            generator=gen, aug_generator=aug_gen)
    return expert, start_epoch, problem, plan


def distill(recipe: Recipe, spec: DatasetSpec, experts_dir: str | Path, run_dir: str | Path, *,
            real_images: torch.Tensor, real_labels: torch.Tensor, select_images: torch.Tensor | None,
            select_labels: torch.Tensor | None, ctx: RunContext = RunContext(), resume: bool = False
            ) -> DistillState:
    """Run (or resume) distillation into ``run_dir`` on ``ctx``'s device and shard; selection scores candidates
    on ``select_*``; ``ctx.track``'s sinks watch it too (rank 0's)."""
    cfg, device, shard = recipe.distill, ctx.device, ctx.shard
    net = FunctionalConvNet(ModelConfig.for_spec(spec), device=device)
    experts = ExpertStore(experts_dir).trajectories(spec, net.config, cfg.max_start_epoch + cfg.expert_epochs,
                                                    data_fingerprint(real_images, real_labels),
                                                    expert_settings(section_dict(recipe.experts)))
    method = Method.bind(recipe, net, device)
    autocast = autocast_dtype(cfg.arithmetic, device)
    run = RunDir(run_dir, recipe, spec, shard)
    if run.checkpoint.exists() and not resume:
        raise KitFileError(run.checkpoint, "a run already exists here; pass --resume to continue it or choose "
                                           "another --out")
    state = run.load() if run.checkpoint.exists() else initial_state(recipe, spec, experts, net, method,
                                                                      real_images, real_labels, device)
    gen = torch.Generator().set_state(state.rng)
    aug_gen = torch.Generator(device=device)
    aug_gen.set_state(state.aug_rng)
    syn = Synthetic(state, device, method.labels.sgd)
    selector = Selector(recipe.eval, spec, select_images, select_labels, device, shard)

    tracker = Tracker.open(list(ctx.track) if shard.leader else [], run_dir, spec, recipe.to_dict())
    with Monitor(run, selector, (gen, aug_gen), ctx.progress, tracker) as monitor:
        monitor.begin(state, syn)
        while state.iteration < cfg.iterations:
            tick = time.perf_counter()

            # 1-3. an expert and a start epoch, what the student must match, the inner steps
            expert, start_epoch, problem, plan = draw(cfg, spec, state.upper, experts, method, net, gen, aug_gen,
                                                      device)

            # 4. match: the loss and its gradient w.r.t. the images, the lr (and learned labels)
            inner_targets = method.labels.targets(syn.labels, syn.images, net, problem.targets[-1][1])
            result = match(net, syn.images, inner_targets, syn.lr, problem, plan, cfg.grad, shard, autocast)
            loss, grad_norm, *terms = torch.stack([result.loss, result.grad_images.norm(), *result.terms]).tolist()

            # 5. update, unless DATM's threshold skips a diverging (or non-finite) match
            skipped = not math.isfinite(loss) or loss > cfg.threshold
            change = torch.zeros((), device=device) if skipped else syn.step(result, cfg)

            # 6. advance: T grows by one every `interval` iterations, up to T+
            state.iteration += 1
            state.skipped += skipped
            if state.iteration % cfg.interval == 0:
                state.upper = min(state.upper + 1, cfg.max_start_epoch)
            state.seconds += time.perf_counter() - tick

            lr, change = torch.stack([syn.lr.detach().float(), change.float()]).tolist()
            monitor.after(state, syn, {
                "iteration": state.iteration, "loss": loss, "terms": terms,
                "lr": lr, "image_change": change, "grad_norm": grad_norm, "start_epoch": start_epoch,
                "expert": expert, "skipped": skipped, "seconds": time.perf_counter() - tick})

        labels_ctx = LabelContext(spec, experts, net, device)
        return monitor.finish(state, syn, lambda y, x: method.labels.record(y.to(device), x.to(device), labels_ctx)
                              .cpu(), {"experts": [str(p) for p in experts.paths],
                                       "expert_settings": experts.settings})

