"""What test files share besides fake data (``fakes.py``) and the official references (``references.py``): commands
run in this process, a small distillation and its command-line form, and a matching problem. Shared from here, not
imported from another test file: a test module is importable only from its own folder."""

import contextlib
import io
import pickle
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import torch
from typer.testing import CliRunner, Result

import evaluator.evaluate
from challenge_kit import parts
from challenge_kit.cli import app
from challenge_kit.context import RunContext
from challenge_kit.core.contract import CIFAR100
from challenge_kit.core.models import FunctionalConvNet, ModelConfig
from challenge_kit.distill import distill
from challenge_kit.matching import Matching, plan_inner_steps
from challenge_kit.recipes import DistillConfig, EvalConfig, ExpertConfig, Recipe

EVALUATOR = "python -m evaluator"  # the first word of an ``invoke`` that runs the scorer's own command line


def ddkit(*args, env: dict | None = None) -> Result:
    """A ddkit command run in this process; a crash (an exception that is not the command's exit) fails the test."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def ddkit_ok(*args) -> Result:
    """A ddkit command that must succeed."""
    result = ddkit(*args)
    assert result.exit_code == 0, result.output
    return result


def invoke(argv: list) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a ddkit command, or of ``python -m evaluator`` (same process)."""
    argv = [str(a) for a in argv]
    if argv[0] == EVALUATOR:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = evaluator.evaluate.main(argv[1:])
            except SystemExit as e:  # argparse's refusals
                code = e.code
        return code, out.getvalue(), err.getvalue()
    result = ddkit(*argv)
    return result.exit_code, result.stdout, result.stderr


# the quick profile cut to a single 2-epoch expert and 1-step matching on 3 images: seconds on a CPU; a small
# lr_lr, as the quick one sends the learned lr from 0.01 to 0.09 in two steps with experts this short, and every
# match after diverges (a run that distills nothing, which stops after 10 such iterations)
SMALL = ["--profile", "quick", "--device", "cpu", "--set", "eval.every=0", "--set", "eval.holdout_per_class=0",
         "--set", "experts.num_experts=1", "--set", "experts.epochs=2", "--set", "experts.batch_size=30",
         "--set", "distill.expert_epochs=1", "--set", "distill.max_start_epoch=0",
         "--set", "distill.current_max_start_epoch=0", "--set", "distill.iterations=4",
         "--set", "distill.checkpoint_every=1", "--set", "distill.syn_steps=1", "--set", "distill.batch_syn=3",
         "--set", "distill.init=real", "--set", "distill.threshold=100", "--set", "distill.lr_lr=1e-7"]

SPEC = replace(CIFAR100.subset(3, ipc=4), image_size=16)  # small images keep the CPU test fast


def _real(n_per_class=12, seed=0):
    """Learnable class-coloured images with texture, challenge-normalized scale."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(SPEC.num_classes).repeat_interleave(n_per_class)
    images = torch.randn(len(labels), 3, 16, 16, generator=g) * 0.5
    for c in range(SPEC.num_classes):
        images[labels == c, c] += 1.5
    return images, labels


def _recipe(every=3, **distill):
    base = DistillConfig(iterations=6, syn_steps=3, expert_epochs=1, min_start_epoch=0, current_max_start_epoch=0,
                         max_start_epoch=2, interval=2, batch_syn=6, lr_img=100.0, lr_lr=1e-5, checkpoint_every=2,
                         init=parts.choose("init", "real_correct"), threshold=10.0)
    return Recipe(dataset="cifar100", profile="test", experts=ExpertConfig(num_experts=2, epochs=3),
                  distill=replace(base, **distill),
                  eval=EvalConfig(every=every, epochs=3, rounds=2, final_rounds=2, split="holdout"))


def _run(recipe, store, run_dir, resume=False, **ctx):
    x, y = _real()
    sx, sy = _real(4, seed=2)
    return distill(recipe, SPEC, store, run_dir, real_images=x, real_labels=y, select_images=sx, select_labels=sy,
                   ctx=RunContext(progress=False, **ctx), resume=resume)


D = torch.float64


def _problem(steps=6, batch_syn=5, seed=3, soft=False):
    torch.manual_seed(0)
    net = FunctionalConvNet(ModelConfig(num_classes=4, image_size=16, width=8, depth=2), dtype=D)
    images = torch.randn(12, 3, 16, 16, dtype=D)
    labels = torch.arange(4).repeat_interleave(3)
    if soft:
        labels = (torch.nn.functional.one_hot(labels, 4) * 3 + torch.randn(12, 4, dtype=D)).requires_grad_(True)
    start = net.init_flat(1)
    target = start + 0.01 * torch.randn_like(start)
    lr = torch.tensor(0.05, dtype=D)
    plan = plan_inner_steps(12, batch_syn, steps, 16, "cpu", generator=torch.Generator().manual_seed(seed),
                            aug_generator=torch.Generator().manual_seed(seed + 1), dtype=D)
    return net, images, labels, lr, Matching(start, start, [(steps, target)]), plan


class _Storage:
    """Stands for a storage in the hand-made pickle below."""


class _Tensor:
    def __init__(self, numel: int) -> None:
        self.numel = numel

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (_Storage(), 0, (self.numel,), (1,), False, OrderedDict())


class _Pickler(pickle.Pickler):
    def __init__(self, f, numel: int) -> None:
        super().__init__(f, protocol=2)
        self.numel = numel

    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", self.numel, None) if isinstance(obj, _Storage) else None


def unfilled(path: Path, numel: int = 1 << 28) -> Path:
    """A pickle-stream torch file (the pre-1.6 format) of 300 bytes declaring a 1 GiB storage it never fills."""
    f = io.BytesIO()
    for header in (torch.serialization.MAGIC_NUMBER, torch.serialization.PROTOCOL_VERSION,
                   {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, f, protocol=2)
    _Pickler(f, numel).dump(_Tensor(numel))
    pickle.dump([], f, protocol=2)  # the storages to fill: none
    path.write_bytes(f.getvalue())
    return path
