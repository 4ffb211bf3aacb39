"""``ddkit subset``: a few classes in the dataset's own layout, read by the same loaders, the source never touched."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from fakes import MINI, needs_mini, write_cifar, write_tiny
from helpers import ddkit
from PIL import Image

from challenge_kit.core.contract import CIFAR100
from challenge_kit.data import dataset_spec, load_split, read_cifar_pickle, tiny_classes, tiny_files
from challenge_kit.data import subset as subset_module
from challenge_kit.data.subset import MANIFEST, PARTIAL, spread

WNIDS = tuple(f"n{i:08d}" for i in range(9, 0, -1))  # odd: write_tiny then gives every class val images


def tree(root: Path) -> dict:
    """Every file under ``root`` with its size and modification time: what 'untouched' means."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_spread_takes_even_steps_from_the_first_class():
    names = [f"c{i:03d}" for i in range(200)]
    assert spread(names, 20) == [f"c{i:03d}" for i in range(0, 200, 10)]
    assert spread(names[:20], 20) == names[:20] and spread(names[:10], 3) == ["c000", "c003", "c006"]


def test_tiny_subset_is_the_real_layout_and_loads_as_those_classes_of_the_source(tmp_path):
    src = tmp_path / "tiny-imagenet-200"
    write_tiny(src, wnids=WNIDS, per_class=4)
    (src / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in WNIDS))
    boxes = src / "train" / "n00000004" / "n00000004_boxes.txt"
    boxes.write_text("".join(f"n00000004_{k}.JPEG\t0\t0\t9\t9\n" for k in range(4)))
    before = tree(src)
    out = tmp_path / "tiny-3"
    result = ddkit("subset", "tinyimagenet", "--data-root", tmp_path, "--classes", 3, "--train-per-class", 2,
                   "--test-per-class", 1, "--out", out)
    assert result.exit_code == 0, result.output
    assert "wrote 3 classes" in result.output and "6 train / 3 test images" in result.output
    chosen = ["n00000001", "n00000004", "n00000007"]  # sorted positions 0, 3, 6
    assert (out / "wnids.txt").read_text().split() == chosen
    assert (out / "words.txt").read_text() == (src / "words.txt").read_text()
    assert sorted(p.name for p in (out / "train" / "n00000004" / "images").iterdir()) == \
        ["n00000004_0.JPEG", "n00000004_1.JPEG"]
    assert (out / "train" / "n00000004" / "n00000004_boxes.txt").read_text().splitlines() == \
        boxes.read_text().splitlines()[:2]
    annotations = [ln.split("\t") for ln in (out / "val" / "val_annotations.txt").read_text().splitlines()]
    assert sorted(w for _, w, *_ in annotations) == chosen
    assert sorted(p.name for p in (out / "val" / "images").iterdir()) == sorted(n for n, *_ in annotations)
    assert not [p for p in out.rglob("*") if p.is_symlink() or (p.is_file() and p.stat().st_nlink > 1)]  # copies
    assert tree(src) == before  # the source is read, never written

    spec = dataset_spec("tinyimagenet", out)
    assert spec.class_names == tuple(chosen) and not spec.challenge
    x, y, _ = load_split("tinyimagenet", out, "train", cache_dir=tmp_path / "cache")
    full_x, full_y, full_spec = load_split("tinyimagenet", src, "train", cache_dir=tmp_path / "cache")
    for label, wnid in enumerate(chosen):
        source = full_x[full_y == full_spec.class_names.index(wnid)][:2]
        assert torch.equal(x[y == label], source)  # the first two images of the class, in the loader's order
    _, yt, _ = load_split("tinyimagenet", out, "test", cache_dir=tmp_path / "cache")
    assert yt.bincount().tolist() == [1, 1, 1]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["classes"] == chosen and manifest["train_images"] == 6 and manifest["test_images"] == 3
    assert manifest["request"]["classes"] == 3 and len(manifest["source_sha256"]) == 64


def test_cifar_subset_renumbers_labels_and_names_its_classes(tmp_path):
    raw = write_cifar(tmp_path / "data", n_train=6, n_test=2, per_class=True)
    out = tmp_path / "cifar-2"
    result = ddkit("subset", "cifar100", "--data-root", tmp_path / "data", "--class", "class_042", "--class",
                   "class_007", "--train-per-class", 4, "--out", out)
    assert result.exit_code == 0, result.output
    meta = read_cifar_pickle(out / "cifar-100-python" / "meta")
    assert meta["fine_label_names"] == ["class_007", "class_042"] and len(meta["coarse_label_names"]) == 20
    train = read_cifar_pickle(out / "cifar-100-python" / "train")
    assert train["fine_labels"] == [0] * 4 + [1] * 4 and train["coarse_labels"] == [1] * 4 + [8] * 4
    rows = [7 * 6 + k for k in range(4)] + [42 * 6 + k for k in range(4)]
    assert (train["data"] == raw["train"]["data"][rows]).all()
    assert train["filenames"] == [raw["train"]["filenames"][i] for i in rows]

    x, y, spec = load_split("cifar100", out, "train", cache_dir=tmp_path / "cache")
    assert spec == CIFAR100.subset(2, class_names=("class_007", "class_042")) and not spec.challenge
    assert y.tolist() == train["fine_labels"] and x.shape == (8, 3, 32, 32)
    xt, yt, _ = load_split("cifar100", out, "test", cache_dir=tmp_path / "cache")
    assert yt.tolist() == [0, 0, 1, 1]  # every test image of the two classes
    assert dataset_spec("cifar100", out) == spec
    assert dataset_spec("cifar100", tmp_path / "data") == CIFAR100  # all 100: the challenge spec, as before


def test_image_folder_subset(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c, name in enumerate(("zebra", "apple", "mango")):
            (tmp_path / "src" / split / name).mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", (20, 20), (c * 80, k * 40, 9)).save(tmp_path / "src" / split / name / f"{k}.png")
    out = tmp_path / "sub"
    result = ddkit("subset", "cifar100", "--image-folder", "--data-root", tmp_path / "src", "--classes", 2,
                   "--train-per-class", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == [
        "test/apple/0.png", "test/apple/1.png", "test/mango/0.png", "test/mango/1.png",
        "train/apple/0.png", "train/apple/1.png", "train/mango/0.png", "train/mango/1.png"]
    assert dataset_spec("cifar100", out, image_folder=True).class_names == ("apple", "mango")


def test_the_same_request_again_is_done_another_is_refused(tmp_path):
    write_tiny(tmp_path / "src", wnids=WNIDS, per_class=3)
    args = ["subset", "tinyimagenet", "--data-root", tmp_path / "src", "--classes", 3, "--out", tmp_path / "sub"]
    assert ddkit(*args, "--train-per-class", 2).exit_code == 0
    before = tree(tmp_path / "sub")
    again = ddkit(*args, "--train-per-class", 2)
    assert again.exit_code == 0 and "already holds 3 classes" in again.output
    assert tree(tmp_path / "sub") == before
    other = ddkit(*args, "--train-per-class", 1)
    assert other.exit_code == 1 and f"error: {tmp_path / 'sub' / MANIFEST}: records another subset" in other.output
    assert tree(tmp_path / "sub") == before
    replaced = ddkit(*args, "--train-per-class", 1, "--overwrite")
    assert replaced.exit_code == 0 and "wrote 3 classes" in replaced.output, replaced.output
    fresh = tmp_path / "fresh"
    assert ddkit(*args[:-1], fresh, "--train-per-class", 1).exit_code == 0
    contents = lambda root: {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}  # noqa: E731
    assert contents(tmp_path / "sub") == contents(fresh)  # as if written into an empty folder
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    foreign = ddkit(*args[:-1], tmp_path / "busy", "--train-per-class", 2, "--overwrite")
    assert foreign.exit_code == 1 and f"error: {tmp_path / 'busy' / 'notes.txt'}: is not part of a subset" \
        in foreign.output
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine" and len(list((tmp_path / "busy").iterdir())) == 1
    inside = ddkit(*args[:-1], tmp_path / "src" / "sub", "--train-per-class", 2)
    assert inside.exit_code == 1 and "is inside the dataset" in inside.output
    assert not (tmp_path / "src" / "sub").exists()


def test_a_failed_run_leaves_nothing_and_an_interrupted_one_is_redone(tmp_path, monkeypatch):
    write_tiny(tmp_path / "src", wnids=WNIDS, per_class=3)
    out = tmp_path / "sub"
    args = ["subset", "tinyimagenet", "--data-root", tmp_path / "src", "--classes", 3, "--train-per-class", 2,
            "--out", out]
    real, calls = subset_module.place, []

    def disk_full(source, target):
        calls.append(target)
        if len(calls) == 4:
            raise OSError(28, "No space left on device", str(target))
        real(source, target)

    monkeypatch.setattr(subset_module, "place", disk_full)
    failed = ddkit(*args)
    assert failed.exit_code == 1 and "No space left on device" in failed.output
    assert list(out.iterdir()) == []  # nothing half-written
    monkeypatch.setattr(subset_module, "place", real)
    assert ddkit(*args).exit_code == 0
    # what a killed run leaves: the partial folder with its request, and entries already moved into place
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).unlink()
    (out / PARTIAL).mkdir()
    identity = {k: manifest[k] for k in ("format", "request", "source_sha256")}
    (out / PARTIAL / "request.json").write_text(json.dumps(identity))
    (out / "val" / "images" / "stray.JPEG").write_bytes(b"half")
    redone = ddkit(*args)
    assert redone.exit_code == 0 and "wrote 3 classes" in redone.output
    assert not (out / PARTIAL).exists() and not (out / "val" / "images" / "stray.JPEG").exists()


def test_refusals_are_one_line_naming_the_option_or_file(tmp_path):
    write_tiny(tmp_path / "src", wnids=WNIDS, per_class=3)
    base = ["subset", "tinyimagenet", "--data-root", tmp_path / "src", "--out", tmp_path / "sub"]
    cases = [
        (["--train-per-class", 1], "error: --classes: give the number of classes"),
        (["--classes", 0, "--train-per-class", 1], "error: --classes: must be at least 1, got 0"),
        (["--classes", 10, "--train-per-class", 1], "error: --classes 10: "),
        (["--classes", 2, "--class", "n00000001", "--train-per-class", 1], "error: --classes and --class"),
        (["--class", "n00000042", "--train-per-class", 1], "error: --class n00000042: not a class of"),
        (["--classes", 2, "--train-per-class", 1, "--download"], "error: tinyimagenet cannot be downloaded by ddkit"),
        (["--classes", 2, "--train-per-class", 4],
         f"error: {tmp_path / 'src' / 'train' / 'n00000001' / 'images'}: holds 3 images of class n00000001, "
         "fewer than --train-per-class 4"),
        (["--classes", 2, "--train-per-class", 1, "--test-per-class", 3],
         f"error: {tmp_path / 'src' / 'val' / 'val_annotations.txt'}: holds 2 images of class n00000001, "
         "fewer than --test-per-class 3"),
    ]
    for extra, message in cases:
        result = ddkit(*base, *extra)
        assert result.exit_code == 1 and result.output.startswith(message), (extra, result.output)
        assert len(result.output.strip().splitlines()) == 1


def test_class_list_file_with_a_bom_and_listings_that_are_not_utf8(tmp_path):
    write_tiny(tmp_path / "src", wnids=WNIDS, per_class=3)
    listing = tmp_path / "keep.txt"
    listing.write_bytes("\ufeffn00000005\nn00000002\n".encode())
    result = ddkit("subset", "tinyimagenet", "--data-root", tmp_path / "src", "--class-list", listing,
                   "--train-per-class", 1, "--out", tmp_path / "sub")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sub" / "wnids.txt").read_text().split() == ["n00000002", "n00000005"]
    listing.write_bytes(b"n00000005\n\xff\xfe\n")
    bad = ddkit("subset", "tinyimagenet", "--data-root", tmp_path / "src", "--class-list", listing,
                "--train-per-class", 1, "--out", tmp_path / "sub2")
    assert bad.exit_code == 1 and bad.output.strip() == f"error: {listing}: is not UTF-8 text (byte 0xff at offset 10)"


@needs_mini
def test_a_subset_of_all_the_mini_set_reads_as_the_mini_set(tmp_path):
    """The 20-class mini folder taken whole: the same files, bytes and labels in the same order (so the same
    decoded data), the spec the same: a run on the subset is a run on the mini set."""
    out = tmp_path / "tiny-20"
    result = ddkit("subset", "tinyimagenet", "--data-root", MINI, "--classes", 20, "--train-per-class", 100,
                   "--out", out)
    assert result.exit_code == 0, result.output
    assert dataset_spec("tinyimagenet", out) == dataset_spec("tinyimagenet", MINI)
    wnids = tiny_classes(MINI)
    assert tiny_classes(out) == wnids
    for split in ("train", "test"):
        files, labels = tiny_files(out, split, wnids)
        mini_files, mini_labels = tiny_files(MINI, split, wnids)
        assert labels == mini_labels and len(files) == {"train": 2000, "test": 1000}[split]
        assert [f.relative_to(out) for f in files] == [f.relative_to(MINI) for f in mini_files]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(files, mini_files, strict=True))


def test_subset_pickles_load_through_the_restricted_reader_only(tmp_path):
    write_cifar(tmp_path / "data", n_train=2, n_test=1, per_class=True)
    assert ddkit("subset", "cifar100", "--data-root", tmp_path / "data", "--classes", 4, "--train-per-class", 2,
                 "--out", tmp_path / "sub").exit_code == 0
    for name in ("train", "test", "meta"):
        with open(tmp_path / "sub" / "cifar-100-python" / name, "rb") as f:
            assert isinstance(pickle.load(f, encoding="latin1"), dict)  # torchvision's reader gets a dict too


@pytest.mark.parametrize("dataset", ["cifar100", "tinyimagenet"])
def test_subset_of_an_absent_root_says_so(tmp_path, dataset):
    result = ddkit("subset", dataset, "--data-root", tmp_path / "nope", "--classes", 2, "--train-per-class", 1,
                   "--out", tmp_path / "sub")
    assert result.exit_code == 1 and result.output.strip() == f"error: {tmp_path / 'nope'}: data root not found"


@pytest.mark.slow
def test_the_quick_profile_runs_on_a_cifar_subset(tmp_path, monkeypatch):
    """Subset spec, holdout, the profile's experts, matching range and batch: all as on a Tiny ImageNet subset.
    One expert, two iterations and no selection rounds instead of the profile's 2, 20 and 3 (on two busy cores a
    full quick run on 5 classes took 15 minutes, its selection rounds alone over 3); threshold 100, as experts
    that take one step an epoch (105 images, batch 256) give matches above 1, and a run that skips all stops."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_cifar(tmp_path / "data", n_train=21, n_test=2, per_class=True, smooth=True)
    assert ddkit("subset", "cifar100", "--data-root", tmp_path / "data", "--classes", 5, "--train-per-class", 21,
                 "--out", tmp_path / "cifar-5").exit_code == 0
    out = tmp_path / "out"
    result = ddkit("make-submission", "cifar100", "--data-root", tmp_path / "cifar-5", "--out", out, "--profile",
                   "quick", "--device", "cpu", "--set", "distill.iterations=2", "--set", "experts.num_experts=1",
                   "--set", "eval.every=0", "--set", "distill.threshold=100")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["challenge_submission"] is False and manifest["shape"] == [50, 3, 32, 32]
    assert manifest["spec"]["class_names"] == [f"class_{i:03d}" for i in range(0, 100, 20)]
    verify = ddkit("verify", out / "cifar100.pt")
    assert verify.exit_code == 0, verify.output
