"""Real-data loading on files written in the real formats: CIFAR-100 pickles, a Tiny ImageNet tree, ImageFolder."""

import io
import json
import os
import pickle
import pickletools
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import MINI, color, needs_mini, py2_pickle, write_cifar, write_tiny
from PIL import Image
from typer.testing import CliRunner

from challenge_kit import data
from challenge_kit.cli import app
from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import CIFAR100, TINYIMAGENET, DatasetSpec, denormalize, normalize
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.expert_file import read_expert
from challenge_kit.core.reading import load_torch
from challenge_kit.data import dataset_spec, default_cache_dir, load_split, read_cifar_pickle
from challenge_kit.data.cifar import CIFAR_LAYOUT, cifar_classes, cifar_spec, read_cifar100
from challenge_kit.runs import BEST


@pytest.fixture
def user_cache(tmp_path, monkeypatch):
    """Never the real ~/.cache: the default cache lands here."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "ddkit"


# ---------------------------------------------------------------------------------------------- CIFAR-100

def test_cifar_pickles_load_as_normalized_challenge_tensors(tmp_path):
    raw = write_cifar(tmp_path)
    x, y, spec = load_split("cifar100", tmp_path, "train")
    assert spec == CIFAR100 and spec.challenge
    assert x.shape == (30, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == raw["train"]["fine_labels"]
    pixels = torch.from_numpy(raw["train"]["data"]).view(-1, 3, 32, 32).float() / 255  # CHW rows, R then G then B
    assert torch.equal(x, normalize(pixels, CIFAR100))
    assert torch.allclose(denormalize(x, CIFAR100), pixels, atol=1e-6)
    xt, yt, _ = load_split("cifar100", tmp_path, "test")
    assert xt.shape == (20, 3, 32, 32) and yt.tolist() == raw["test"]["fine_labels"]


def test_cifar_reads_the_python2_pickles_of_the_download(tmp_path):
    """The download's files are Python 2 cPickle protocol-2 pickles (``fakes.py2_pickle``): byte strings only, and
    arrays that reach exactly numpy 1.x's three globals, which the reader must admit."""
    raw = write_cifar(tmp_path, n_train=1001)  # past 1000 labels: the lists are filled in two batches
    folder = tmp_path / "cifar-100-python"
    for name in ("train", "test", "meta"):
        data = (folder / name).read_bytes()
        ops = [op for op, _, _ in pickletools.genops(data)]
        reached = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
        assert reached == (set() if name == "meta" else {"numpy.core.multiarray _reconstruct", "numpy ndarray",
                                                         "numpy dtype"}), name
        assert {op.name for op in ops if "STRING" in op.name or "UNICODE" in op.name or "BYTES" in op.name} <= {
            "SHORT_BINSTRING", "BINSTRING"}, name
        assert max(op.proto for op in ops) == 2
        pickletools.dis(data, out=io.StringIO())  # well formed: marks, stack and memo all balance
    appends = [op.name for op, _, _ in pickletools.genops((folder / "train").read_bytes())].count("APPENDS")
    assert appends == 3 * 2  # filenames, fine and coarse labels: 1000 items, then 1
    train = read_cifar_pickle(folder / "train")
    assert set(train) == {"filenames", "batch_label", "fine_labels", "coarse_labels", "data"}
    assert train["batch_label"] == "training batch 1 of 1" and train["filenames"] == raw["train"]["filenames"]
    assert train["fine_labels"] == raw["train"]["fine_labels"] and train["data"].dtype == np.uint8
    assert train["data"].shape == (1001, 3072) and (train["data"] == raw["train"]["data"]).all()
    assert read_cifar_pickle(folder / "meta") == raw["meta"]


def test_cifar_missing_files_name_the_layout(tmp_path):
    with pytest.raises(KitFileError, match=r"cifar-100-python/train.*cifar-100-python/\{train,test,meta\}"):
        load_split("cifar100", tmp_path, "train")
    write_cifar(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(KitFileError, match="meta"):
        load_split("cifar100", tmp_path, "test")


class _Boom:
    """A pickle that, once loaded, creates ``marker`` (an absolute path: never the caller's folder, which may be
    read-only and so hide a load that ran)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_cifar_reader_refuses_pickles_that_would_run_code(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-100-python" / "train").write_bytes(pickle.dumps({"data": _Boom(marker)}, protocol=2))
    with pytest.raises(KitFileError, match="not allowed"):
        load_split("cifar100", tmp_path, "train")
    assert not marker.exists()


def test_cifar_bad_content_is_one_clear_error(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-100-python" / "train"
    d = {"data": np.zeros((4, 3072), np.uint8), "fine_labels": [0, 1, 2, 100]}
    path.write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(KitFileError, match="labels outside 0..99"):
        load_split("cifar100", tmp_path, "train")
    path.write_bytes(b"\x80\x02truncated")
    with pytest.raises(KitFileError, match="not a CIFAR-100 python pickle"):
        load_split("cifar100", tmp_path, "train")


def test_each_cifar_refusal_names_its_file_and_what_the_format_holds(tmp_path):
    def refusal(read, path):
        with pytest.raises(KitFileError) as caught:
            read()
        assert caught.value.path == str(path)
        return caught.value.problem

    write_cifar(tmp_path)
    folder = tmp_path / "cifar-100-python"
    train, meta = folder / "train", folder / "meta"
    assert refusal(lambda: read_cifar_pickle(folder / "none"), folder / "none") == f"not found; expected {CIFAR_LAYOUT}"
    train.write_bytes(pickle.dumps([1, 2], protocol=2))
    assert refusal(lambda: read_cifar_pickle(train), train) == \
        "not a CIFAR-100 python pickle (holds a list, not a dict)"
    for pixels, labels, problem in [
        (np.zeros((2, 3072), np.float32), [0, 1], "'data' must be a uint8 array N x 3072"),
        (np.zeros((2, 3, 1024), np.uint8), [0, 1], "'data' must be a uint8 array N x 3072"),
        (np.zeros((2, 3071), np.uint8), [0, 1], "'data' must be a uint8 array N x 3072"),
        (np.zeros((2, 3072), np.uint8), (0, 1), "'fine_labels' must be a list of 2 ints (one per image)"),
        (np.zeros((2, 3072), np.uint8), [0], "'fine_labels' must be a list of 2 ints (one per image)"),
        (np.zeros((2, 3072), np.uint8), [-1, 0], "no images, or labels outside 0..99"),
        (np.zeros((2, 3072), np.uint8), [0, 100], "no images, or labels outside 0..99"),
    ]:
        train.write_bytes(pickle.dumps({"data": pixels, "fine_labels": labels}, protocol=2))
        assert refusal(lambda: read_cifar100(tmp_path, "train", CIFAR100), train) == problem
    one = np.arange(3072, dtype=np.uint8).reshape(1, 3072)
    train.write_bytes(pickle.dumps({"data": one, "fine_labels": [99]}, protocol=2))
    pixels, labels = read_cifar100(tmp_path, "train", CIFAR100)
    assert labels.tolist() == [99] and labels.dtype.is_floating_point is False and str(labels.dtype) == "torch.int64"
    assert pixels.shape == (1, 3, 32, 32) and pixels.flatten().tolist() == one.flatten().tolist()
    for names in ([], [f"c{i}" for i in range(101)], ["a", 2], "a b"):
        meta.write_bytes(pickle.dumps({"fine_label_names": names}, protocol=2))
        assert refusal(lambda: cifar_classes(tmp_path), meta) == \
            "expected 'fine_label_names': a list of 1..100 class names"
    train.write_bytes(b"\x80\x02}q\x00(")  # a pickle cut short
    assert refusal(lambda: read_cifar_pickle(train), train).startswith("not a CIFAR-100 python pickle (")
    meta.write_bytes(pickle.dumps({b"fine_label_names": ["apple"]}, protocol=2))  # bytes keys, as Python 3 writes
    assert cifar_classes(tmp_path) == ["apple"]
    assert cifar_spec(["apple"]) == CIFAR100.subset(1, class_names=("apple",))
    assert cifar_spec([f"c{i}" for i in range(100)]) is CIFAR100


def test_cifar_cache_is_reused_and_invalidated_by_a_changed_source(tmp_path, monkeypatch, user_cache):
    write_cifar(tmp_path)
    first = load_split("cifar100", tmp_path, "train")
    assert list(user_cache.glob("cifar100-train-*.safetensors"))
    real_reader = data.read_cifar100

    def must_not_decode(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(data, "read_cifar100", must_not_decode)
    again = load_split("cifar100", tmp_path, "train")
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    write_cifar(tmp_path, seed=1)  # same sizes, new content
    with pytest.raises(AssertionError, match="decoded again"):
        load_split("cifar100", tmp_path, "train")
    monkeypatch.setattr(data, "read_cifar100", real_reader)
    changed = load_split("cifar100", tmp_path, "train")
    assert not torch.equal(changed[0], first[0])
    assert len(list(user_cache.glob("cifar100-train-*.safetensors"))) == 1  # stale entry gone



class _Served(io.BytesIO):
    """What ``urllib.request.urlopen`` returns: a response body that knows its URL and length."""

    def __init__(self, url: str, body: bytes):
        super().__init__(body)
        self.url, self.length = url, len(body)


def _cifar_download_line(root: Path, reason: str) -> str:
    return (f"{root}: downloading CIFAR-100 failed ({reason}); to place the files by hand, unpack "
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into ROOT so that it holds "
            "ROOT/cifar-100-python/{train,test,meta} (torchvision's CIFAR-100 python format), and run without "
            "--download")


def test_cifar_download_offline_or_corrupt_is_one_line_from_torchvisions_own_errors(tmp_path, monkeypatch):
    """torchvision's real download code with the network replaced where it opens URLs: offline, ``urlopen`` raises the
    URLError a machine without DNS gives; a proxy's page in place of the archive fails torchvision's md5 check."""
    import socket
    import urllib.error
    import urllib.request

    def offline(request, *args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(KitFileError) as caught:
        data.fetch("cifar100", tmp_path / "offline")
    assert str(caught.value) == _cifar_download_line(tmp_path / "offline",
                                                     "[Errno -3] Temporary failure in name resolution")

    def proxy(request, *args, **kwargs):  # every request answered, with a page that is not the archive
        return _Served(request.full_url, b"<html>sign in to the proxy</html>")

    monkeypatch.setattr(urllib.request, "urlopen", proxy)
    with pytest.raises(KitFileError) as caught:
        data.fetch("cifar100", tmp_path / "proxy")
    assert str(caught.value) == _cifar_download_line(tmp_path / "proxy", "File not found or corrupted.")


def test_cifar_download_fetches_both_splits_into_the_root_then_reads_them(tmp_path, monkeypatch):
    """torchvision's ``CIFAR100(root, train, download=True)`` fetches into ``root/cifar-100-python``: here a
    stand-in that places the real format's files (``fakes.write_cifar``) where the archive unpacks, and records each
    call."""
    import torchvision.datasets

    calls = []

    class Download:
        def __init__(self, root, train=True, transform=None, target_transform=None, download=False):
            calls.append((root, train, download))
            if download:
                write_cifar(Path(root), n_train=4, n_test=3)

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", Download)
    root = tmp_path / "fresh"
    images, labels, spec = load_split("cifar100", root, "test", download=True, cache_dir=tmp_path / "cache")
    assert calls == [(str(root), True, True), (str(root), False, True)]  # the train set, then the test set
    assert spec == CIFAR100 and images.shape == (3, 3, 32, 32) and len(labels) == 3

# ------------------------------------------------------------------------------------------ Tiny ImageNet

def test_tiny_tree_classes_sorted_labels_match_annotations(tmp_path):
    truth = write_tiny(tmp_path)
    x, y, spec = load_split("tinyimagenet", tmp_path, "train")
    assert spec.class_names == ("n01000000", "n02000000", "n03000000") and spec.num_classes == 3
    assert not spec.challenge and spec.image_size == 64 and spec.mean == TINYIMAGENET.mean
    assert x.shape == (10, 3, 64, 64) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    pixels = denormalize(x, spec)
    gray = pixels[6:10][[i for i in range(4) if pixels[6 + i].std(0).max() < 1e-5]]
    assert len(gray) == 1 and abs(float(gray.mean()) - 77 / 255) < 0.01  # grayscale JPEG became RGB
    for img, label in zip(pixels, y.tolist(), strict=True):
        if img.std(0).max() > 1e-5:
            colour = torch.tensor(color(label)) / 255
            assert torch.allclose(img.mean((1, 2)), colour, atol=0.02)
    xv, yv, vspec = load_split("tinyimagenet", tmp_path, "test")
    assert vspec == spec
    names = sorted(truth)  # val images come in file-name order
    assert yv.tolist() == [truth[n] for n in names]
    for img, label in zip(denormalize(xv, spec), yv.tolist(), strict=True):  # the image's content agrees
        assert torch.allclose(img.mean((1, 2)), torch.tensor(color(label)) / 255, atol=0.02)


def test_tiny_full_200_classes_is_the_challenge_spec(tmp_path):
    wnids = [f"n{i:08d}" for i in range(200)]
    (tmp_path / "wnids.txt").write_text("\n".join(reversed(wnids)))
    for w in wnids:
        (tmp_path / "train" / w / "images").mkdir(parents=True)
    spec = dataset_spec("tinyimagenet", tmp_path)
    assert spec == TINYIMAGENET and spec.challenge


def test_tiny_parent_folder_is_accepted(tmp_path):
    write_tiny(tmp_path / "tiny-imagenet-200")
    assert dataset_spec("tinyimagenet", tmp_path).num_classes == 3


def test_tiny_missing_pieces_name_the_path(tmp_path):
    with pytest.raises(KitFileError, match=r"train: not found; expected ROOT/\{wnids.txt"):
        load_split("tinyimagenet", tmp_path, "train")
    write_tiny(tmp_path)
    (tmp_path / "val" / "val_annotations.txt").unlink()
    with pytest.raises(KitFileError, match="val_annotations.txt: not found"):
        load_split("tinyimagenet", tmp_path, "test")
    (tmp_path / "wnids.txt").write_text("n01000000\nn09999999\n")
    with pytest.raises(KitFileError, match="n09999999/images: not found"):
        load_split("tinyimagenet", tmp_path, "train")


def test_wnids_with_a_byte_order_mark_or_not_utf8(tmp_path):
    """A BOM (what some editors save) is dropped, not glued to the first wnid; other bytes are one line naming it."""
    write_tiny(tmp_path)
    wnids = tmp_path / "wnids.txt"
    wnids.write_bytes(b"\xef\xbb\xbf" + wnids.read_bytes())
    assert dataset_spec("tinyimagenet", tmp_path).class_names == ("n01000000", "n02000000", "n03000000")
    wnids.write_bytes("n01000000\nn0200000\u00e9\n".encode("latin-1"))
    result = CliRunner().invoke(app, ["reference", "tinyimagenet", "--data-root", str(tmp_path),
                                      "--out-file", str(tmp_path / "ref.pt")])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {wnids}: is not UTF-8 text (byte 0xe9 at offset 18)"


def test_tiny_val_listing_a_missing_file_is_an_error(tmp_path):
    write_tiny(tmp_path)
    (tmp_path / "val" / "images" / "val_0.JPEG").unlink()
    with pytest.raises(KitFileError, match="val_0.JPEG: listed in val/val_annotations.txt but not found"):
        load_split("tinyimagenet", tmp_path, "test")


def test_tiny_cache_hit_and_changed_file_invalidates(tmp_path, monkeypatch):
    write_tiny(tmp_path)
    first = load_split("tinyimagenet", tmp_path, "train")
    calls = []
    real = data.decode_images
    monkeypatch.setattr(data, "decode_images", lambda *a: calls.append(a) or real(*a))
    again = load_split("tinyimagenet", tmp_path, "train")
    assert calls == [] and torch.equal(again[0], first[0])
    img = tmp_path / "train" / "n02000000" / "images" / "n02000000_1.JPEG"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(img, quality=50)
    changed = load_split("tinyimagenet", tmp_path, "train")
    assert len(calls) == 1 and not torch.equal(changed[0], first[0])


def test_changed_class_list_is_never_served_from_the_old_entry(tmp_path):
    write_tiny(tmp_path)
    load_split("tinyimagenet", tmp_path, "train")
    (tmp_path / "wnids.txt").write_text("n01000000\nn03000000\n")
    x, y, spec = load_split("tinyimagenet", tmp_path, "train")
    assert spec.class_names == ("n01000000", "n03000000") and x.shape[0] == 7 and y.max() == 1


def test_the_cache_goes_to_the_user_cache_folder_never_the_data_root(tmp_path, monkeypatch, user_cache):
    write_tiny(tmp_path / "data")
    load_split("tinyimagenet", tmp_path / "data", "test")
    assert default_cache_dir() == user_cache and list(user_cache.glob("tinyimagenet-test-*.safetensors"))
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "ddkit"
    load_split("tinyimagenet", tmp_path / "data", "test", cache_dir=tmp_path / "mine")  # --cache-dir wins
    assert list((tmp_path / "mine").glob("tinyimagenet-test-*.safetensors"))


def test_a_cache_folder_that_cannot_be_written_only_costs_the_decoding(tmp_path, caplog):
    write_tiny(tmp_path / "data")
    (tmp_path / "blocked").write_text("a file where the cache folder would be")
    with caplog.at_level("WARNING"):
        x, y, spec = load_split("tinyimagenet", tmp_path / "data", "test", cache_dir=tmp_path / "blocked")
    fresh, _, _ = load_split("tinyimagenet", tmp_path / "data", "test", cache_dir=tmp_path / "mine")
    assert torch.equal(x, fresh) and y.shape == (x.shape[0],)
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"decoded data not cached: {tmp_path / 'blocked'}/tinyimagenet-test-")


# -------------------------------------------------------------------------------------------- ImageFolder

def test_image_folder_is_resized_sorted_and_never_a_challenge_spec(tmp_path):
    for split, n in (("train", 2), ("test", 1)):
        for c, name in enumerate(("zebra", "apple")):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", (40, 30), color(c)).save(folder / f"{k}.png")
    x, y, spec = load_split("cifar100", tmp_path, "train", image_folder=True)
    assert spec.class_names == ("apple", "zebra") and spec.num_classes == 2 and not spec.challenge
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]
    assert torch.allclose(denormalize(x[0], spec).mean((1, 2)), torch.tensor(color(1)) / 255, atol=1e-2)
    xt, yt, _ = load_split("cifar100", tmp_path, "test", image_folder=True)
    assert xt.shape == (2, 3, 32, 32) and yt.tolist() == [0, 1]


# -------------------------------------------------------------------------------------- the shared mini set

@needs_mini
def test_shared_mini_set(user_cache):
    wnids = sorted(MINI.joinpath("wnids.txt").read_text().split())
    x, y, spec = load_split("tinyimagenet", MINI, "train")
    assert spec.num_classes == 20 and spec.class_names == tuple(wnids) and not spec.challenge
    assert x.shape == (2000, 3, 64, 64) and torch.equal(y.bincount(), torch.full((20,), 100))
    pixels = denormalize(x, spec)
    assert pixels.min() > -1e-5 and pixels.max() < 1 + 1e-5
    first = np.array(Image.open(MINI / "train" / wnids[0] / "images" / f"{wnids[0]}_0.JPEG").convert("RGB"))
    expect = normalize(torch.from_numpy(first).permute(2, 0, 1).float() / 255, spec)
    assert any(torch.equal(expect, img) for img in x[:100])
    xv, yv, _ = load_split("tinyimagenet", MINI, "test")
    assert xv.shape == (1000, 3, 64, 64) and torch.equal(yv.bincount(), torch.full((20,), 50))
    lines = [ln.split("\t") for ln in MINI.joinpath("val", "val_annotations.txt").read_text().splitlines()]
    for name, wnid, *_ in lines[:5]:
        img = np.array(Image.open(MINI / "val" / "images" / name).convert("RGB"))
        row = normalize(torch.from_numpy(img).permute(2, 0, 1).float() / 255, spec)
        (match,) = [i for i in range(len(xv)) if torch.equal(xv[i], row)]
        assert int(yv[match]) == wnids.index(wnid)
    assert not (MINI / ".ddkit-cache").exists()  # the shared folder is read-only: cache went to the user's
    assert len(list(user_cache.glob("tinyimagenet-*.safetensors"))) == 2


# -------------------------------------------------------------------------------------- ddkit reference

def test_reference_command_writes_the_scorer_file(tmp_path):
    raw = write_cifar(tmp_path)
    out = tmp_path / "cifar100_test.pt"
    result = CliRunner().invoke(app, ["reference", "cifar100", "--data-root", str(tmp_path), "--out-file", str(out)])
    assert result.exit_code == 0, result.output
    assert "reference test set for cifar100: 100 classes x 10 IPC, 3x32x32, challenge" in result.output
    listed = CliRunner().invoke(app, ["reference", "cifar100", "--data-root", str(tmp_path), "--out-file",
                                      str(tmp_path / "again_test.pt"), "--json"])
    assert json.loads(listed.stdout) == {"file": str(tmp_path / "again_test.pt"), "spec": CIFAR100.to_dict()}
    ref = load_torch(out)
    assert set(ref) == {"images_val", "labels_val"}
    assert ref["images_val"].shape == (20, 3, 32, 32) and ref["images_val"].dtype == torch.float32
    assert ref["labels_val"].dtype == torch.int64 and ref["labels_val"].tolist() == raw["test"]["fine_labels"]
    again = CliRunner().invoke(app, ["reference", "cifar100", "--data-root", str(tmp_path), "--out-file", str(out)])
    assert again.exit_code == 1 and f"{out}: already exists; pass --overwrite" in again.output
    missing = CliRunner().invoke(app, ["reference", "cifar100", "--data-root", str(tmp_path / "nope"),
                                       "--out-file", str(tmp_path / "other_test.pt")])
    assert missing.exit_code == 1 and "error:" in missing.output and "nope" in missing.output


def test_reference_command_on_a_tiny_subset_says_subset(tmp_path):
    write_tiny(tmp_path / "tiny")
    out = tmp_path / "ref.pt"
    result = CliRunner().invoke(app, ["reference", "tinyimagenet", "--data-root", str(tmp_path / "tiny"),
                                      "--out-file", str(out)])
    assert result.exit_code == 0, result.output
    assert "3 classes" in result.output and "subset" in result.output
    assert load_torch(out)["images_val"].shape == (6, 3, 64, 64)


# ------------------------------------------------------------------------- --image-folder on every command

def test_image_folder_reaches_every_command_that_reads_data(tmp_path, user_cache):
    """subset, reference, baseline, experts, distill and make-submission read the same ImageFolder: each ends
    with the folder's classes (a subset spec), never with CIFAR-100's pickles (there are none here)."""
    for split, n in (("train", 12), ("test", 2)):
        for c, name in enumerate(("zebra", "apple", "mango", "kiwi")):
            folder = tmp_path / "src" / split / name
            folder.mkdir(parents=True)
            for k in range(n):
                Image.new("RGB", (24, 24), (60 * c, 20 * k, 99)).save(folder / f"{k:02d}.png")
    run = CliRunner().invoke
    folder, names = tmp_path / "folder", ["apple", "kiwi", "mango"]  # 3 of the 4, spread over the sorted list
    done = run(app, ["subset", "cifar100", "--image-folder", "--data-root", str(tmp_path / "src"), "--classes", "3",
                     "--train-per-class", "11", "--out", str(folder)])
    assert done.exit_code == 0, done.output
    assert dataset_spec("cifar100", folder, image_folder=True).class_names == tuple(names)
    common = ["--data-root", str(folder), "--image-folder"]
    budget = ["--profile", "quick", "--device", "cpu", "--set", "experts.num_experts=1", "--set", "experts.epochs=1",
              "--set", "experts.objective=sgd", "--set", "experts.batch_size=11", "--set", "eval.every=0",
              "--set", "eval.holdout_per_class=0", "--set", "distill.iterations=1", "--set", "distill.syn_steps=1",
              "--set", "distill.expert_epochs=1", "--set", "distill.current_max_start_epoch=0",
              "--set", "distill.max_start_epoch=0", "--set", "distill.batch_syn=10"]
    reference = run(app, ["reference", "cifar100", *common, "--out-file", str(tmp_path / "ref.pt")])
    assert reference.exit_code == 0 and "3 classes" in reference.output, reference.output
    assert load_torch(tmp_path / "ref.pt")["labels_val"].tolist() == [0, 0, 1, 1, 2, 2]
    commands = {"baseline": ["baseline", "cifar100", *common, "--out", str(tmp_path / "baseline")],
                "experts": ["experts", "cifar100", *common, "--out", str(tmp_path / "store"), *budget],
                "distill": ["distill", "cifar100", *common, "--experts", str(tmp_path / "store"),
                            "--out", str(tmp_path / "run"), *budget],
                "make-submission": ["make-submission", "cifar100", *common, "--experts", str(tmp_path / "store"),
                                    "--out", str(tmp_path / "sub"), *budget]}
    for command, args in commands.items():
        result = run(app, args)
        assert result.exit_code == 0, (command, result.output)
    specs = [read_expert(tmp_path / "store" / "expert_0000.safetensors", snapshots=False).spec,
             DistilledArtifact.load(tmp_path / "run" / BEST).spec,
             *(DatasetSpec.from_dict(json.loads((tmp_path / out / "manifest.json").read_text())["spec"])
               for out in ("baseline", "sub"))]
    for spec in specs:
        assert spec.class_names == tuple(names) and spec.image_size == 32 and not spec.challenge


def test_cifar_layout_counts_the_train_split_from_its_labels_and_refuses_labels_that_are_no_list(tmp_path):
    """The plan's count comes from the train file's fine labels, read without decoding an image; the test split's
    labels read the same way; a ``fine_labels`` that is not a list (a tuple here) is one line naming the file."""
    written = write_cifar(tmp_path, n_train=30, n_test=20)
    layout = data.data_layout("cifar100", tmp_path)
    assert (layout.dataset, layout.layout, layout.train_images) == ("cifar100", "cifar-100-python", 30)
    assert data.read_cifar100_labels(tmp_path, "test") == written["test"]["fine_labels"]
    broken = {**written["train"], "fine_labels": tuple(written["train"]["fine_labels"])}
    train = tmp_path / "cifar-100-python" / "train"
    train.write_bytes(py2_pickle(broken))
    with pytest.raises(KitFileError) as refused:
        data.data_layout("cifar100", tmp_path)
    assert str(refused.value) == f"{train}: 'fine_labels' must be a list of ints (one per image)"
