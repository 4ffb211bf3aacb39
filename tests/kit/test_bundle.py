"""The upload: `ddkit baseline` at the full challenge shapes, `ddkit bundle`, `verify` and `evaluate` of a zip."""

import io
import json
import shutil
import zipfile

import pytest
import torch
from fakes import MINI, needs_mini, write_cifar, write_tiny
from helpers import ddkit

from challenge_kit import bundle as bundle_module
from challenge_kit.core.contract import TINYIMAGENET
from challenge_kit.core.reading import sha256
from challenge_kit.data import load_split
from challenge_kit.export import export_images
from evaluator import evaluate as evaluate_module
from evaluator.fast import Arithmetic
from evaluator.scorer import Score

NAMES = ["cifar100.pt", "tinyimagenet.pt"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Baseline exports at the full challenge shapes, from fake datasets in the real on-disk formats."""
    root = tmp_path_factory.mktemp("upload")
    write_cifar(root / "cifar", n_train=2, n_test=2, per_class=True, smooth=True)
    write_tiny(root / "tiny", wnids=tuple(f"n{i:08d}" for i in range(200)), per_class=1)
    for name, data in (("cifar100", "cifar"), ("tinyimagenet", "tiny")):
        result = ddkit("baseline", name, "--data-root", root / data, "--out", root / "out" / name,
                       "--cache-dir", root / "cache")
        assert result.exit_code == 0, result.output
    return root


def member_bytes(exports):
    return {name: (exports / "out" / name.removesuffix(".pt") / name).read_bytes() for name in NAMES}


def write_zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def test_baseline_is_random_real_images_in_default_order(exports):
    images, labels, _ = load_split("cifar100", exports / "cifar", "train", cache_dir=exports / "cache")
    out = exports / "out" / "cifar100"
    chosen = torch.load(out / "cifar100.pt", weights_only=True)
    assert chosen.shape == (1000, 3, 32, 32)
    for i in (0, 9, 10, 505, 999):  # image i is a training image of class i // 10
        assert any(torch.equal(chosen[i], images[j]) for j in (labels == i // 10).nonzero().flatten())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["challenge_submission"] and manifest["verify"]["ok"] and manifest["baseline"]["seed"] == 0
    assert manifest["sha256"] == sha256(out / "cifar100.pt") and (out / "preview.png").is_file()
    again = ddkit("baseline", "cifar100", "--data-root", exports / "cifar", "--out", exports / "again",
                  "--cache-dir", exports / "cache")
    assert again.exit_code == 0
    assert (exports / "again" / "cifar100.pt").read_bytes() == (out / "cifar100.pt").read_bytes()


def test_bundle_of_two_full_shape_exports(exports, tmp_path):
    out = tmp_path / "submission.zip"
    result = ddkit("bundle", exports / "out" / "tinyimagenet", exports / "out" / "cifar100" / "cifar100.pt",
                   "--out-file", out)
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as zf:
        assert zf.namelist() == NAMES  # exactly two files, at the root, in the scorer's order
        for name, data in member_bytes(exports).items():
            assert zf.read(name) == data
        shapes = [tuple(torch.load(io.BytesIO(zf.read(n)), weights_only=True).shape) for n in NAMES]
    assert shapes == [(1000, 3, 32, 32), (2000, 3, 64, 64)]
    manifest = json.loads((tmp_path / "submission.manifest.json").read_text())
    assert manifest["sha256"] == sha256(out)
    for name in NAMES:
        export = json.loads((exports / "out" / name.removesuffix(".pt") / "manifest.json").read_text())
        assert manifest["members"][name]["sha256"] == export["sha256"]
        assert manifest["members"][name]["manifest"] == export
    verify = ddkit("verify", out, "--json")
    assert verify.exit_code == 0, verify.output
    report = json.loads(verify.stdout)
    assert report["ok"] and report["problems"] == [] and set(report["members"]) == set(NAMES)
    ddkit("bundle", exports / "out" / "cifar100", exports / "out" / "tinyimagenet", "--out-file",
          tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == out.read_bytes()  # same files, same zip bytes


def test_bundle_refuses_subset_exports_and_leaves_no_zip(exports, tmp_path):
    subset = TINYIMAGENET.subset(20)
    images = torch.load(exports / "out" / "tinyimagenet" / "tinyimagenet.pt", weights_only=True)[:200]
    export_images(images, subset, tmp_path / "mini", source="test")
    bare = tmp_path / "bare" / "tinyimagenet.pt"  # no manifest: told by its shape
    bare.parent.mkdir()
    shutil.copy(tmp_path / "mini" / "tinyimagenet.pt", bare)
    out = tmp_path / "submission.zip"
    for source, says in ((tmp_path / "mini", "a subset export"), (bare, "subset export of 20 classes")):
        result = ddkit("bundle", exports / "out" / "cifar100", source, "--out-file", out)
        assert result.exit_code == 1 and says in result.stderr
        assert result.stderr.startswith(f"error: {source / 'tinyimagenet.pt' if source.is_dir() else source}: ")
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_bundle_refuses_two_of_one_dataset_a_changed_file_and_a_wrong_count(exports, tmp_path):
    cifar = exports / "out" / "cifar100"
    result = ddkit("bundle", cifar, cifar / "cifar100.pt", "--out-file", tmp_path / "s.zip")
    assert result.exit_code == 1 and "both cifar100" in result.stderr
    result = ddkit("bundle", cifar, "--out-file", tmp_path / "s.zip")
    assert result.exit_code == 1 and "give 2 exports" in result.stderr
    changed = tmp_path / "changed"
    shutil.copytree(cifar, changed)
    torch.save(torch.load(changed / "cifar100.pt", weights_only=True) * 0.5, changed / "cifar100.pt")
    result = ddkit("bundle", changed, exports / "out" / "tinyimagenet", "--out-file", tmp_path / "s.zip")
    assert result.exit_code == 1 and "changed after export" in result.stderr
    assert not (tmp_path / "s.zip").exists()


def bad_zip(path, case, members):
    subset = io.BytesIO()
    torch.save(torch.load(io.BytesIO(members["tinyimagenet.pt"]), weights_only=True)[:200], subset)
    entries = {
        "folder": [("out/", b""), ("out/cifar100.pt", members["cifar100.pt"]),
                   ("out/tinyimagenet.pt", members["tinyimagenet.pt"])],
        "missing": [("cifar100.pt", members["cifar100.pt"])],
        "third": [*members.items(), ("notes.txt", b"hello")],
        "subset": [("cifar100.pt", members["cifar100.pt"]), ("tinyimagenet.pt", subset.getvalue())],
        "parent": [*members.items(), ("../cifar100.pt", b"x")],
        "escape": [*members.items(), ("\x1b[2Jcls.pt", b"x")],
        "twice": [*members.items(), ("cifar100.pt", members["cifar100.pt"])],
    }[case]
    if case == "twice":
        with pytest.warns(UserWarning, match="Duplicate name"):
            return write_zip(path, entries)
    return write_zip(path, entries)


@pytest.mark.parametrize("case, member, says", [
    ("folder", "out/cifar100.pt", "inside a folder: the scorer reads cifar100.pt at the zip's root"),
    ("missing", "tinyimagenet.pt", "missing"),
    ("third", "notes.txt", "unexpected file"),
    ("subset", "tinyimagenet.pt", "shape: 200x3x64x64 is not the 2000x3x64x64 that tinyimagenet needs "
                                  "(a subset export of 20 classes?"),
    ("parent", "../cifar100.pt", "unsafe path"),
    ("escape", r"'\x1b[2Jcls.pt'", "unexpected file"),
    ("twice", "cifar100.pt", "appears twice"),
])
def test_verify_zip_names_the_member_that_is_wrong(exports, tmp_path, case, member, says):
    path = bad_zip(tmp_path / "submission.zip", case, member_bytes(exports))
    result = ddkit("verify", path)
    assert result.exit_code == 3
    assert "\x1b" not in result.output
    assert any(line.startswith(f"FAIL {path}:{member}: ") and says in line for line in result.stdout.splitlines())
    report = json.loads(ddkit("verify", path, "--json").stdout)
    assert any(line.startswith(f"{path}:{member}: ") and says in line for line in report["failures"])
    assert report["exit_code"] == 3 and not report["ok"]


def test_verify_zip_that_is_not_a_submission_zip(tmp_path):
    torch.save(torch.zeros(2), tmp_path / "tensor.zip")  # a torch file is a zip archive too
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    for name, says in (("tensor.zip", "is a torch file"), ("junk.zip", "not a readable zip")):
        result = ddkit("verify", tmp_path / name)
        assert result.exit_code == 4 and result.stderr.startswith(f"error: {tmp_path / name}: ")
        assert says in result.stderr


def test_member_size_is_capped_before_reading(exports, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_module, "MAX_MEMBER_BYTES", 1000)
    path = write_zip(tmp_path / "s.zip", member_bytes(exports).items())
    contents = bundle_module.read_zip(path)
    assert contents.members == {} and all("more than a submission tensor" in p for _, p in contents.problems)


def test_evaluate_zip_scores_both_in_order_and_writes_the_mean(exports, tmp_path, monkeypatch):
    """The scorer itself is tested elsewhere: here, what a zip hands it and what comes back out."""
    called = []

    def fake(images, spec, test_images, test_labels, **kwargs):
        called.append((spec.name, tuple(images.shape), tuple(test_images.shape)))
        return Score(spec.name, mean={"cifar100": 0.25, "tinyimagenet": 0.5}[spec.name], rounds=[0.0],
                     epochs=kwargs["epochs"], seeds=[1], device="cpu", official=False, scorer=Arithmetic(), spec=spec,
                     test_images=len(test_images), seconds=0.0)

    monkeypatch.setattr(evaluate_module, "evaluate_images", fake)
    ref = tmp_path / "ref"
    for name, data in (("cifar100", "cifar"), ("tinyimagenet", "tiny")):
        assert ddkit("reference", name, "--data-root", exports / data, "--out-file", ref / f"{name}_test.pt",
                     "--cache-dir", exports / "cache").exit_code == 0
    good = tmp_path / "submission.zip"
    write_zip(good, member_bytes(exports).items())
    result = ddkit("evaluate", good, "--reference-dir", ref, "--epochs", "2", "--rounds", "1",
                   "--out", tmp_path / "scores", "--json")
    assert result.exit_code == 0, result.output
    assert called == [("cifar100", (1000, 3, 32, 32), (200, 3, 32, 32)), ("tinyimagenet", (2000, 3, 64, 64),
                                                                           (400, 3, 64, 64))]
    assert (tmp_path / "scores" / "scores.txt").read_text() == "correct: 0.375"
    out = json.loads(result.stdout)
    assert out["correct"] == 0.375 and out["partial"] is False and out["skipped"] == []
    assert f"scoring {good}:tinyimagenet.pt on {ref / 'tinyimagenet_test.pt'}" in result.stderr

    missing = bad_zip(tmp_path / "missing.zip", "missing", member_bytes(exports))
    result = ddkit("evaluate", missing, "--reference-dir", ref, "--epochs", "1")
    assert result.exit_code == 1 and result.stderr.startswith(f"error: {missing}:tinyimagenet.pt: no such file")
    assert "--partial" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = ddkit("evaluate", missing, "--reference-dir", ref, "--epochs", "1", "--partial", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["partial"] is True and out["skipped"] == ["tinyimagenet"] and out["correct"] == 0.25

    folder = bad_zip(tmp_path / "folder.zip", "folder", member_bytes(exports))
    result = ddkit("evaluate", folder, "--reference-dir", ref, "--epochs", "1", "--partial")
    assert result.exit_code == 1 and result.stderr.startswith(f"error: {folder}:out/cifar100.pt: inside a folder")


def test_evaluate_zip_options_are_checked(tmp_path):
    result = ddkit("evaluate", tmp_path / "s.zip", "--reference", tmp_path / "r.pt")
    assert result.exit_code == 1 and "--reference-dir" in result.stderr
    result = ddkit("evaluate", tmp_path / "x.pt", "--reference", tmp_path / "r.pt", "--partial")
    assert result.exit_code == 1 and "for a submission .zip" in result.stderr


@needs_mini
def test_baseline_on_the_real_mini_tiny_imagenet_is_a_subset_export(tmp_path):
    result = ddkit("baseline", "tinyimagenet", "--data-root", MINI, "--out", tmp_path / "out",
                   "--cache-dir", tmp_path / "cache", "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["shape"] == [200, 3, 64, 64] and manifest["challenge_submission"] is False
    assert manifest["spec"]["class_names"] == sorted((MINI / "wnids.txt").read_text().split())
