"""Every seed technique checked against its paper's equation on a small case (docs/techniques.md), and the
registry that makes them recipe parts."""

import inspect
import math
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from challenge_kit import parts
from challenge_kit.core.contract import CIFAR100, default_labels
from challenge_kit.core.errors import KitValueError
from challenge_kit.core.models import ConvNet, FunctionalConvNet, ModelConfig, load_flat_
from challenge_kit.experts.store import ExpertStore
from challenge_kit.experts.training import difficulty_order, expert_lr, train_experts
from challenge_kit.matching import Matching, match, plan_inner_steps
from challenge_kit.parts import coresets, expert_parts, initializations, kinds, labels, matching_parts
from challenge_kit.parts.catalogue import CORESETS
from challenge_kit.recipes import DistillConfig, ExpertConfig, load_recipe

SPEC = replace(CIFAR100.subset(3, ipc=2), image_size=8)
MODEL = ModelConfig.for_spec(SPEC, width=4, depth=1)
D = torch.float64


def _data(n_per_class=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(3).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 3, 8, 8, generator=g) * 0.3
    for c in range(3):
        x[y == c, c] += 1.0
    return x, y


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    x, y = _data()
    train_experts(x, y, x, y, SPEC, ExpertConfig(num_experts=3, epochs=3, batch_size=6, lr=0.05), root, model=MODEL)
    return ExpertStore(root).trajectories(SPEC, MODEL, 3)


# ------------------------------------------------------------------------------------------ the registry

def test_every_kind_has_its_parts_and_unknown_names_are_refused_naming_the_known_ones():
    names = {kind: set(parts.REGISTRY[kind]) for kind in parts.KINDS}
    assert names["init"] == {"real", "real_correct", "noise", "kmeans", "herding", "kcenter", "el2n_easy",
                             "el2n_hard", "el2n_band", "forgetting_easy", "forgetting_hard", "forgetting_band"}
    assert names["labels"] == {"hard", "learned_soft", "assigned_soft"}
    assert names["mask"] == {"all", "deep"} and names["weights"] == {"uniform", "balanced"}
    assert names["terms"] == {"final", "intermediate"} and names["perturb"] == {"none", "filter_noise"}
    assert names["objective"] == {"gsam", "sgd", "smooth"} and names["schedule"] == {"full", "easy_first"}
    with pytest.raises(KitValueError, match="unknown mask part 'shallow'; known: all, deep"):
        parts.get("mask", "shallow")


def test_a_misspelt_part_in_a_recipe_fails_at_load_in_under_two_seconds_naming_the_known_parts(tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('method = "typo"\n[distill]\ninit = "k-means"\n')
    tick = time.perf_counter()
    with pytest.raises(KitValueError, match=r"distill.init: unknown init part 'k-means'; known: real, real_correct, "
                                         r"noise, kmeans"):
        load_recipe(str(path), dataset="tinyimagenet")
    assert time.perf_counter() - tick < 2
    for bad, match_ in (('[distill]\ngrad = "tesla"\n', "unknown gradient mode 'tesla'; known: exact, unrolled"),
                        ('[experts]\nobjective = "adam"\n', "experts.objective: unknown objective part 'adam'"),
                        ('[eval]\nsplit = "val"\n', "eval.split must be one of holdout, test"),
                        ('[distill]\narithmetic = "bf16"\n',
                         "distill.arithmetic must be one of float32, fast, got 'bf16'")):
        path.write_text(bad)
        with pytest.raises(KitValueError, match=match_):
            load_recipe(str(path), dataset="cifar100")


COMMAND = """
import sys
from challenge_kit.cli import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    print("exit", e.code, "torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize("command", ["distill", "experts", "make-submission"])
def test_the_whole_command_refuses_a_misspelt_part_before_torch_is_imported(tmp_path, command):
    """Python plus typer start in about 0.4 s; torch alone takes 2 s on this machine: a typo must not wait for it."""
    path = tmp_path / "typo.toml"
    path.write_text('method = "typo"\n[experts]\nschedule = "easy-first"\n')
    args = [command, "tinyimagenet", "--recipe", str(path), "--out", str(tmp_path / "out"), "--data-root",
            str(tmp_path / "absent")] + (["--experts", str(tmp_path / "experts")] if command == "distill" else [])
    done = subprocess.run([sys.executable, "-c", COMMAND, *args], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "exit 1 torch imported: False", done.stdout + done.stderr
    assert done.stderr.strip() == (f"error: {path} profile full: experts.schedule: unknown schedule part "
                                   "'easy-first'; known: full, easy_first")
    assert not (tmp_path / "out").exists()


def test_the_catalogue_names_every_part_once_and_each_resolves_to_its_implementation():
    assert len({(p.kind, p.name) for p in parts.PARTS}) == len(parts.PARTS)
    assert {p.kind for p in parts.PARTS} == set(parts.KINDS) == set(kinds.PROTOCOLS)
    assert parts.get("init", "kmeans") is initializations.representative
    assert parts.get("schedule", "easy_first") is expert_parts.EasyFirst
    for part in parts.catalogue():
        assert callable(part.impl), part.where


def test_every_part_bound_to_its_parameters_answers_its_kinds_one_call_shape():
    for part in parts.catalogue():
        section = ExpertConfig if parts.FIELDS[part.kind].startswith("experts.") else DistillConfig
        bound = parts.build(part.kind, section(**{part.kind: parts.choose(part.kind, part.name)}))
        protocol = kinds.PROTOCOLS[part.kind]
        assert isinstance(bound, protocol), (part.kind, part.name)  # its attributes and methods are there
        for name in protocol.__annotations__:
            assert hasattr(bound, name), (part.name, name)
        for name in ("__call__", "initial", "targets", "record", "indices"):
            if name in vars(protocol):
                want = list(inspect.signature(vars(protocol)[name]).parameters)[1:]  # less self
                got = inspect.signature(bound if name == "__call__" else getattr(bound, name)).parameters
                assert list(got) == want, (part.kind, part.name, name)
        if part.kind == "labels":  # what the catalogue declares (read without torch) is what the class says
            assert part.challenge == bound.challenge, part.name
    assert [p.name for p in parts.catalogue() if p.challenge] == ["hard"]


def test_method_recipes_lay_over_the_dataset_recipe_and_name_their_parts():
    base = load_recipe("cifar100")
    pad = load_recipe("pad", dataset="cifar100")
    assert pad.method == "PAD" and pad.parts()["mask"] == "deep" and pad.parts()["schedule"] == "easy_first"
    assert pad.distill.syn_steps == base.distill.syn_steps == 40  # M-DATM table 1 underneath
    assert load_recipe("smooth", "quick", dataset="tinyimagenet").experts.epochs == 3
    with pytest.raises(KitValueError, match="needs the dataset"):
        load_recipe("pad")


# ------------------------------------------------------------------------------------------ DATM (docs/techniques.md)

def test_datm_soft_labels_average_the_logits_of_the_experts_that_classify_each_image_correctly(store):
    net = FunctionalConvNet(MODEL)
    x, _ = _data(2, seed=5)
    ctx = labels.LabelContext(SPEC, store, net, device=torch.device("cpu"))
    got = labels.LearnedSoft(parts.LearnedSoftParams(label_epoch=-1, label_experts=0)).initial(x, ctx)
    truth = default_labels(3, 2)
    outs = [labels.logits(net, store.last(e), x) for e in range(store.count)]
    for i in range(len(x)):
        right = [o[i] for o in outs if o[i].argmax() == truth[i]]
        expected = torch.stack(right).mean(0) if right else torch.stack([o[i] for o in outs]).mean(0)
        assert torch.allclose(got[i], expected, atol=1e-6)
    assert labels.LearnedSoft.learned and not labels.Hard.learned


def test_tesla_assigned_labels_are_the_target_snapshots_logits(store):
    net = FunctionalConvNet(MODEL)
    x, _ = _data(2, seed=6)
    target = store.snapshot(1, 2)
    got = labels.AssignedSoft(parts.AssignedSoftParams()).targets(default_labels(3, 2), x, net, target)
    net.module.eval()
    assert torch.allclose(got, net(target, x), atol=1e-6) and not got.requires_grad


# ------------------------------------------------------------------------------------------ PAD (docs/techniques.md)

def test_el2n_is_the_l2_distance_of_softmax_from_onehot():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)
    expected = torch.stack([(p[0] - torch.tensor([1.0, 0, 0])).norm(), (p[1] - torch.tensor([0, 0, 1.0])).norm()])
    assert torch.allclose(expert_parts.el2n(logits, y), expected)


def test_fiex_schedule_starts_easy_adds_harder_images_then_drops_the_easiest():
    cfg = ExpertConfig(schedule=parts.choose("schedule", "easy_first", initial_ratio=0.75, add_end_epoch=5,
                                             drop_easy=0.1))
    order = torch.arange(100)  # easiest first
    sched = parts.build("schedule", cfg)
    sizes = [len(sched.indices(order, 100, e)) for e in range(1, 8)]
    assert sizes == [75, 81, 87, 93, 100, 90, 90]
    assert torch.equal(sched.indices(order, 100, 1), order[:75])  # the easiest 75%
    assert torch.equal(sched.indices(order, 100, 6), order[10:])  # the easiest 10% dropped at once
    assert expert_parts.Full().indices(order, 100, 3) is None


def test_fiex_difficulty_is_mean_el2n_of_early_models_and_cached(tmp_path):
    x, y = _data()
    cfg = ExpertConfig(batch_size=6, lr=0.05, seed=1,
                       schedule=parts.choose("schedule", "easy_first", score_models=2, score_epochs=1))
    order = difficulty_order(x, y, cfg, tmp_path, "fp", MODEL)
    assert sorted(order.tolist()) == list(range(len(y)))
    cached = difficulty_order(x, y, cfg, tmp_path, "fp", MODEL)
    assert torch.equal(order, cached)
    from safetensors.torch import load_file

    scores = load_file(str(tmp_path / "difficulty.safetensors"))["scores"]
    assert torch.all(scores[order][1:] >= scores[order][:-1])  # easiest (lowest EL2N) first


def test_fiem_mask_drops_the_first_share_of_the_flat_parameters():
    net = FunctionalConvNet(MODEL)
    mask = parts.build("mask", DistillConfig(mask=parts.choose("mask", "deep", discard_ratio=0.25)))(net)
    k = int(net.num_params * 0.25)
    assert mask.shape == (net.num_params,) and not mask[:k].any() and mask[k:].all()
    assert parts.build("mask", DistillConfig())(net) is None


# ------------------------------------------------------------------------------------------ smooth experts (002)

def test_clipped_loss_coefficient_rises_from_half_to_one_over_five_epochs():
    assert [expert_parts.clip_coefficient(e, 0.5, 5) for e in range(7)] == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0]


def test_gradient_penalty_is_the_two_sided_input_gradient_norm_penalty():
    net = FunctionalConvNet(MODEL, dtype=D)
    p = net.init_flat(0)
    x, y = _data(1, seed=2)
    x = x.double().requires_grad_(True)
    out = net(p, x)
    got = expert_parts.gradient_penalty(out, x, y, target=1.0)
    norms = []
    for i in range(len(y)):  # per sample: d f_{y_i}(x_i) / d x_i, by the full Jacobian
        jac = torch.autograd.functional.jacobian(lambda xi, i=i: net(p, xi[None])[0, y[i]], x[i].detach())
        norms.append(jac.norm())
    assert got.item() == pytest.approx(torch.stack([(n - 1.0) ** 2 for n in norms]).mean().item(), rel=1e-9)


def test_smooth_objective_gradient_is_that_of_lambda_ce_plus_mu_gp():
    f = FunctionalConvNet(MODEL, dtype=D)
    p = f.init_flat(0)
    x, y = _data(2, seed=3)
    x = x.double()
    cfg = ExpertConfig(objective=parts.choose("objective", "smooth", clip_start=0.5, clip_epochs=5, gp_weight=0.7,
                                              gp_target=1.0))
    ce, grad = parts.build("objective", cfg)(f, p, x, y, epoch=2)
    q = p.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    out = f(q, xg)
    (gx,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), xg, create_graph=True)
    loss = 0.7 * F.cross_entropy(out, y) + 0.7 * ((gx.flatten(1).norm(dim=1) - 1) ** 2).mean()
    (expected,) = torch.autograd.grad(loss, q)
    assert torch.allclose(grad, expected, rtol=1e-9, atol=1e-12)
    assert ce.item() == pytest.approx(F.cross_entropy(out, y).item())


def test_expert_lr_is_halved_after_the_decay_epoch():
    cfg = ExpertConfig(lr=0.01, lr_decay_epoch=25, lr_decay=0.5)
    assert [expert_lr(cfg, e) for e in (1, 25, 26, 50)] == [0.01, 0.01, 0.005, 0.005]
    assert expert_lr(ExpertConfig(lr=0.01), 40) == 0.01


def test_kmeans_finds_separated_clusters_and_init_takes_the_nearest_images():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(20, 2, generator=g) for c in centers])
    found = initializations.kmeans(points, 3, torch.Generator().manual_seed(1))
    assert sorted(torch.cdist(found.float(), centers).argmin(1).tolist()) == [0, 1, 2]
    picked = initializations.nearest_distinct(points, found)
    assert len(set(picked.tolist())) == 3
    for j, i in enumerate(picked.tolist()):
        assert i == int(torch.cdist(found[j:j + 1].float(), points).argmin())


def test_representative_init_picks_ipc_distinct_images_of_each_class_in_default_order(store):
    x, y = _data()
    ctx = initializations.InitContext(SPEC, x, y, store, MODEL, torch.Generator().manual_seed(0), torch.device("cpu"))
    got = initializations.representative(ctx)
    assert got.shape == SPEC.shape
    for i, c in enumerate(default_labels(3, 2).tolist()):
        assert any(torch.equal(got[i], x[j]) for j in torch.nonzero(y == c).flatten())
    assert len({tuple(img.flatten()[:5].tolist()) for img in got}) == 6


def test_coreset_inits_pick_by_the_experts_features_and_scores_as_the_baselines_do(store):
    """Herding on the first expert's last features; EL2N of the experts' early snapshots; forgetting over the first
    expert's epochs: each written out here from the snapshots, then picked by the same rule as ``ddkit baseline``."""
    x, y = _data()
    ctx = lambda: initializations.InitContext(SPEC, x, y, store, MODEL, torch.Generator().manual_seed(0),  # noqa: E731
                                              torch.device("cpu"))

    def net(expert, epoch):
        return load_flat_(ConvNet(MODEL), store.snapshot(expert, epoch)).eval()

    with torch.no_grad():
        features = net(0, store.epochs).embed(x)
        early = max(1, store.epochs // 10)
        el2n = sum((F.softmax(net(e, early)(x), 1) - F.one_hot(y, 3)).norm(dim=1) for e in range(3)) / 3
        looks = torch.stack([net(0, e)(x).argmax(1) == y for e in range(1, store.epochs + 1)])
    herded = torch.cat([torch.nonzero(y == c).flatten()[coresets.herding(features[y == c], 2)] for c in range(3)])
    assert torch.equal(initializations.herding(ctx()), x[herded])
    assert torch.allclose(initializations.expert_el2n(ctx()), el2n, atol=1e-6)
    assert torch.equal(initializations.expert_forgetting(ctx()), coresets.forgetting_counts(looks))
    for name in CORESETS:
        got = parts.get("init", name)(ctx())
        assert got.shape == SPEC.shape and torch.equal(got, parts.get("init", name)(ctx())), name
        for i, c in enumerate(default_labels(3, 2).tolist()):
            assert any(torch.equal(got[i], x[j]) for j in torch.nonzero(y == c).flatten()), name


def test_balanced_loss_coefficient_and_its_effect_equal_a_scaled_inner_lr():
    mid_offset = 8
    assert matching_parts.balance(20, 20, mid_offset) == pytest.approx(math.log(10 + 8))
    assert matching_parts.balance(0, 20, mid_offset) == pytest.approx(1 / math.log(10 + 8))
    assert matching_parts.balance(10, 20, mid_offset) == pytest.approx(math.log(8))
    weights = parts.build("weights", DistillConfig(weights=parts.choose("weights", "balanced", balance_offset=8.0)))(
        3, 4, 20)
    assert weights == [1 / math.log(7 + 8)] * 4
    net = FunctionalConvNet(MODEL, dtype=D)
    x, y = _data(2, seed=4)
    start = net.init_flat(0)
    target = start + 0.01 * torch.randn_like(start)
    plan = plan_inner_steps(6, 3, 4, 8, "cpu", torch.Generator().manual_seed(0), torch.Generator().manual_seed(1),
                            dtype=D)
    lr = torch.tensor(0.05, dtype=D)
    y2 = default_labels(3, 2)
    weighted = match(net, x.double(), y2, lr, Matching(start, start, [(4, target)], weights=weights), plan)
    scaled = match(net, x.double(), y2, lr * weights[0], Matching(start, start, [(4, target)]), plan)
    assert weighted.loss.item() == pytest.approx(scaled.loss.item(), rel=1e-12)


def test_intermediate_terms_match_epoch_t_plus_i_after_floor_i_n_over_m_steps(store):
    assert matching_parts.intermediate_steps(10, 3) == [3, 6]
    anchor, targets = matching_parts.intermediate(store, 1, 0, steps=10, expert_epochs=3)
    assert [n for n, _ in targets] == [3, 6, 10]
    for i, (_, snap) in enumerate(targets, 1):
        assert torch.equal(snap, store.snapshot(1, i))
    assert torch.equal(anchor, store.snapshot(1, 0))
    _, final = matching_parts.final(store, 1, 0, steps=10, expert_epochs=3)
    assert [n for n, _ in final] == [10] and torch.equal(final[0][1], store.snapshot(1, 3))


def test_weight_perturbation_adds_filter_normalized_noise_to_weights_only():
    net = FunctionalConvNet(MODEL)
    start = net.init_flat(0)
    out = matching_parts.filter_noise(start, net, torch.Generator().manual_seed(0), 0.1)
    offset = 0
    for _, shape in net.shapes:
        n = shape.numel()
        before, after = start[offset:offset + n].view(shape[0], -1), out[offset:offset + n].view(shape[0], -1)
        if len(shape) >= 2:
            assert torch.allclose((after - before).norm(dim=1), 0.1 * before.norm(dim=1), rtol=1e-4)
        else:
            assert torch.equal(after, before)
        offset += n
    assert matching_parts.no_perturbation(start, net, torch.Generator()) is start
