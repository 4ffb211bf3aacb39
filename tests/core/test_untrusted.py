"""Hostile files against ``ddkit verify``, ``ddkit evaluate`` and ``python -m evaluator``: each refused in one line,
with a non-zero exit, no traceback, and without taking more memory than its size on disk.

Every file is built here, small on disk: a torch zip whose record inflates far beyond the file, a tensor expanded
from one stored value, a pickle-stream file declaring a storage it never fills, sparse, quantized, meta, nested,
complex and odd-dtype tensors, files over the size a challenge file can be (sparse on disk), a forged manifest, and
files that are not torch files at all.
"""

from __future__ import annotations

import io
import json
import pickle
import resource
import subprocess
import sys
import tarfile
import textwrap
import warnings
import zipfile
from pathlib import Path

import helpers
import pytest
import torch
from helpers import EVALUATOR
from safetensors.torch import save_file
from typer.testing import CliRunner

from challenge_kit.cli import app
from challenge_kit.core.contract import CIFAR100, MAX_REFERENCE_BYTES, MAX_SUBMISSION_BYTES, MAX_SUBMISSION_VALUES

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["verify", "verify --json", "evaluate", "evaluate --json", EVALUATOR]
GROWTH = 100 << 20  # the most memory one refusal may add; every hostile file below would take 1 GB or more


def inflating(path: Path, megabytes: int = 256) -> Path:
    """A torch file whose one record is recompressed: a few hundred KB on disk, ``megabytes`` once inflated."""
    plain = io.BytesIO()
    torch.save(torch.zeros(megabytes << 18), plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            method = zipfile.ZIP_DEFLATED if info.filename.endswith("data/0") else zipfile.ZIP_STORED
            dst.writestr(info.filename, src.read(info.filename), compress_type=method)
    return path


def oversized(path: Path, size: int) -> Path:
    """A valid torch file's first bytes, then a hole up to ``size`` bytes: that large, yet nothing on disk."""
    torch.save(torch.zeros(4), path)
    with open(path, "r+b") as f:
        f.truncate(size)
    return path


def legacy_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        for name in ("storages", "tensors", "pickle"):
            data = pickle.dumps(0)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


CONTIGUOUS = ": save tensor.contiguous() if that is meant"
DENSE = ": the scorer needs dense values; save tensor.to_dense()"
NO_TYPE = ", a type no challenge file uses (float32 images, integer labels)"
# name: (how the file is made, the whole error line after "PATH: ": what the user reads, and how to fix it)
SAVED = {
    "expanded": (lambda: torch.zeros(1).expand(2 ** 31), "holds a tensor of 2,147,483,648 values over 1 stored ones "
                                                         f"(expanded or overlapping strides){CONTIGUOUS}"),
    "overlapping": (lambda: torch.zeros(5000).as_strided((1000, 3, 32, 32), (1, 1, 1, 1)),
                    "holds a tensor of 3,072,000 values over 5,000 stored ones (expanded or overlapping strides)"
                    f"{CONTIGUOUS}"),
    "sparse": (lambda: torch.sparse_coo_tensor([[0]], [1.0], (2 ** 40,)),
               f"holds a sparse tensor (sparse_coo){DENSE}"),
    "sparse csr": (lambda: torch.eye(4).to_sparse_csr(), f"holds a sparse tensor (sparse_csr){DENSE}"),
    "quantized": (lambda: torch.quantize_per_tensor(torch.randn(10, 3, 32, 32), 0.1, 0, torch.qint8),
                  "holds a quantized tensor (qint8): the scorer needs float values; save tensor.dequantize()"),
    "meta": (lambda: torch.empty(2 ** 40, device="meta"),
             "holds a meta tensor: a shape without values (made on device='meta')"),
    "nested": (lambda: torch.nested.nested_tensor([torch.randn(3, 32, 32), torch.randn(3, 16, 16)]),
               "holds a nested tensor: the scorer needs one dense tensor; save torch.stack(images)"),
    "complex64": (lambda: torch.randn(1000, 3, 32, 32, dtype=torch.complex64) / 4,
                  "holds a complex64 tensor: images are real numbers (the scorer's .float() would drop the "
                  "imaginary part)"),
    "uint16": (lambda: torch.zeros(10, 3, 32, 32, dtype=torch.uint16), f"holds a uint16 tensor{NO_TYPE}"),
    "float8": (lambda: torch.zeros(10, 3, 32, 32, dtype=torch.float8_e4m3fn),
               f"holds a float8_e4m3fn tensor{NO_TYPE}"),
    "too many values": (lambda: torch.zeros(MAX_SUBMISSION_VALUES + 1, dtype=torch.bool),
                        f"holds {MAX_SUBMISSION_VALUES + 1:,} values; a challenge submission holds at most "
                        f"{MAX_SUBMISSION_VALUES:,} (tinyimagenet's 2000x3x64x64 images)"),
}
WRITTEN = {
    "inflating record": (inflating, "its record 'archive/data/0' is compressed (method 8); torch.save stores every "
                                    "record as is, and a compressed one can inflate far beyond the file: refused "
                                    "unread"),
    "unfilled storage": (helpers.unfilled, "cannot be read as a torch file, truncated or corrupt (its tensors declare "
                                   "1,073,741,824 bytes, more than the file's 300)"),
    "over the size cap": (lambda p: oversized(p, MAX_SUBMISSION_BYTES + 1),
                          f"is {MAX_SUBMISSION_BYTES + 1:,} bytes; a challenge submission is at most "
                          f"{MAX_SUBMISSION_BYTES:,} (every value at 8 bytes, and torch's records): refused unread"),
    "zero-filled": (lambda p: p.write_bytes(bytes(4096)) and p, "begins with 512 zero bytes where a torch file has "
                                                                "its header: not a torch file (a copy or download that "
                                                                "never finished?)"),
    "renamed safetensors": (lambda p: save_file({"x": torch.randn(10)}, str(p)) or p,
                            "is a safetensors file, not a torch file: torch.load (the scorer's reader) "
                            "cannot read it; save the tensor with torch.save"),
    "legacy tar": (legacy_tar, "is a tar archive (torch's format before 2017), which cannot be loaded without "
                               "running its pickle: refused, nothing loaded"),
    "symlink loop": (lambda p: p.symlink_to(p.name) or p, "a symbolic link that loops (Too many levels of symbolic "
                                                          "links)"),
    "dangling symlink": (lambda p: p.symlink_to("gone.pt") or p, "a symbolic link to gone.pt, which does not exist"),
}
CASES = {**{k: v[1] for k, v in SAVED.items()}, **{k: v[1] for k, v in WRITTEN.items()}}
ROWS: list[tuple] = []  # (case, command, exit code, message, left behind, peak RSS growth): printed by `pytest -s`


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One folder per case holding ``cifar100.pt``, a tiny reference beside them, and CodaLab input folders."""
    base = tmp_path_factory.mktemp("untrusted")
    torch.save({"images_val": torch.randn(20, 3, 32, 32), "labels_val": torch.arange(20) % 5}, base / "ref.pt")
    for case in CASES:
        folder = base / "cases" / case.replace(" ", "-")
        (folder / "res").mkdir(parents=True)
        (folder / "ref").mkdir()
        path = folder / "res" / "cifar100.pt"
        if case in SAVED:
            with warnings.catch_warnings():  # torch's notes on prototype and deprecated tensor kinds
                warnings.simplefilter("ignore")
                torch.save(SAVED[case][0](), path)
        else:
            WRITTEN[case][0](path)
        (folder / "ref" / "cifar100_test.pt").write_bytes((base / "ref.pt").read_bytes())
    yield base
    for row in ROWS:
        print(" | ".join(map(str, row)))


def argv(command: str, path: Path, reference: Path) -> list[str]:
    return {
        "verify": ["verify", path],
        "verify --json": ["verify", path, "--json"],
        "evaluate": ["evaluate", path, "--reference", reference, "--device", "cpu", "--epochs", "1", "--rounds", "1"],
        "evaluate --json": ["evaluate", path, "--reference", reference, "--device", "cpu", "--epochs", "1", "--rounds",
                            "1", "--json"],
        EVALUATOR: [EVALUATOR, path.parents[1], path.parents[1] / "scores", "--partial", "--device", "cpu",
                    "--epochs", "1", "--rounds", "1"],
    }[command]


def invoke(args: list) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, growth of the peak RSS in bytes) of a ddkit command or ``python -m evaluator``."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = helpers.invoke(args)
    return (*result, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) << 10)


def left_behind(folder: Path, before: set[Path]) -> str:
    new = sorted(p.relative_to(folder) for p in folder.rglob("*") if p not in before)
    return ", ".join(map(str, new)) or "nothing"


def refused(case: str, command: str, args: list, folder: Path, said: str, code: int) -> str:
    """Run; assert one ``error: PATH: ...`` line on stderr, the exit code, no traceback, no advice to load unsafely,
    bounded memory; for ``--json``, stdout holds the same error as one JSON object."""
    before = set(folder.rglob("*"))
    got, out, err, growth = invoke(args)
    lines = err.strip().splitlines()
    ROWS.append((case, command, got, lines[0] if lines else "", left_behind(folder, before), f"{growth >> 20} MB"))
    assert "Traceback" not in err + out and len(lines) == 1, err
    assert lines[0].startswith("error: ") and said in lines[0], (lines[0], said)
    assert "weights_only" not in err + out
    assert got == code, (got, err)
    assert growth < GROWTH, growth
    if command.endswith("--json"):
        report = json.loads(out)
        assert report["ok"] is False and report["exit_code"] == code and said in report["error"], report
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_files_are_refused_in_one_line(world, case, command):
    folder = world / "cases" / case.replace(" ", "-")
    path = folder / "res" / "cifar100.pt"
    line = refused(case, command, argv(command, path, world / "ref.pt"), folder, CASES[case],
                   4 if command.startswith("verify") else 1)
    assert line == f"error: {path}: {CASES[case]}"
    if command == "verify --json":
        report = json.loads(CliRunner().invoke(app, ["verify", str(path), "--json"]).stdout)
        assert report["exit_code"] == 4 and CASES[case] in report["error"]
    if command == EVALUATOR:
        assert not list((folder / "scores").glob("*"))  # no score written; at most the empty folder


def test_a_reference_over_its_cap_is_refused_unread(world, tmp_path):
    reference = oversized(tmp_path / "huge_test.pt", MAX_REFERENCE_BYTES + 1)
    submission = tmp_path / "sub.pt"
    torch.save(torch.randn(10, 3, 32, 32), submission)
    refused("reference over its cap", "evaluate", argv("evaluate", submission, reference), tmp_path,
            f"{reference}: is {MAX_REFERENCE_BYTES + 1:,} bytes; a reference file is at most "
            f"{MAX_REFERENCE_BYTES:,}", 1)


def test_an_inflating_member_of_a_submission_zip_is_refused(world, tmp_path):
    """The zip's own member cap holds; the .pt inside it is a zip too, and its records are checked the same way."""
    member = inflating(tmp_path / "cifar100.pt").read_bytes()
    assert len(member) < 1 << 20
    upload = tmp_path / "submission.zip"
    with zipfile.ZipFile(upload, "w") as zf:  # stored, as `ddkit bundle` writes it
        for name in ("cifar100.pt", "tinyimagenet.pt"):
            zf.writestr(name, member)
    got, out, err, growth = invoke(["verify", upload, "--json"])
    ROWS.append(("inflating record in submission.zip", "verify --json", got, json.loads(out)["failures"][0], "nothing",
                 f"{growth >> 20} MB"))
    failures = json.loads(out)["failures"]
    assert got == 3 and len(failures) == 2 and growth < GROWTH
    assert failures[0] == (f"{upload}:cifar100.pt: its record 'archive/data/0' is compressed (method 8); torch.save "
                           "stores every record as is, and a compressed one can inflate far beyond the file: refused "
                           "unread")
    (tmp_path / "refs").mkdir()
    refused("inflating record in submission.zip", "evaluate", ["evaluate", upload, "--reference-dir", tmp_path / "refs",
                                                               "--device", "cpu"], tmp_path,
            f"{upload}:cifar100.pt: its record 'archive/data/0' is compressed", 1)


def test_the_empty_tensor_and_an_unknown_shape_name_the_file(world, tmp_path):
    empty, odd = tmp_path / "empty.pt", tmp_path / "odd.pt"
    torch.save(torch.zeros(0, 3, 32, 32), empty)
    torch.save(torch.zeros(7, 3, 48, 48), odd)
    refused("empty tensor", "evaluate", argv("evaluate", empty, world / "ref.pt"), tmp_path,
            f"{empty}: holds an empty tensor (0x3x32x32): no images to score", 1)
    refused("unknown dataset", "evaluate", argv("evaluate", odd, world / "ref.pt"), tmp_path,
            f"{odd}: cannot tell which dataset a (7, 3, 48, 48) tensor is for", 1)


def minus_one_to_one(tmp_path: Path) -> Path:
    """A full cifar100.pt of 8-bit pixels normalized as ``(x - 0.5) / 0.5``: verify FAILs its normalization."""
    pixels = (torch.rand(CIFAR100.shape, generator=torch.Generator().manual_seed(0)) * 255).round() / 255
    path = tmp_path / "cifar100.pt"
    torch.save((pixels - 0.5) / 0.5, path)
    return path


@pytest.mark.parametrize("manifest", ["forged spec", "not JSON", "spec not a spec", "no spec"])
def test_a_manifest_never_changes_the_verdict(tmp_path, manifest):
    path = minus_one_to_one(tmp_path)
    forged = {**CIFAR100.to_dict(), "mean": [0.5] * 3, "std": [0.5] * 3, "challenge": False}
    text = {"forged spec": json.dumps({"spec": forged}), "not JSON": "{", "spec not a spec": '{"spec": 3}',
            "no spec": json.dumps({"labels_dropped": {"note": "exported without its labels"}})}[manifest]
    (tmp_path / "manifest.json").write_text(text)
    got, out, err, _ = invoke(["verify", path, "--json"])
    report = json.loads(out)
    checks = {c["name"]: c for c in report["checks"]}
    ROWS.append((f"manifest: {manifest}", "verify --json", got, checks["normalization"]["reason"][:60],
                 "nothing", "-"))
    assert got == 3 and report["spec"] == CIFAR100.to_dict() and err == ""
    assert checks["normalization"]["status"] == "FAIL" and "(x - 0.5) / 0.5" in checks["normalization"]["reason"]
    assert checks["provenance"]["status"] == "WARN"
    if manifest == "forged spec":
        assert checks["provenance"]["reason"] == (
            "manifest.json declares a spec that normalizes with mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5), not "
            "cifar100's mean/std: ignored, judged by the dataset's own")


MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    from typer.testing import CliRunner
    import challenge_kit.bundle, challenge_kit.cli.render, challenge_kit.core.verify  # what verify loads, loaded first
    from challenge_kit.cli import app
    size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))  # 1 GiB above what is mapped
    results = []
    for path in sys.argv[1:]:
        run = CliRunner().invoke(app, ["verify", path])
        results.append([run.exit_code, run.stderr.strip(), repr(run.exception)])
    print(json.dumps(results))
""")


def test_hostile_files_stay_within_a_one_gigabyte_address_space(world):
    """With the address space capped 1 GiB above the loaded kit, every file that would take 1 GiB or more is still
    refused in its one line (a MemoryError or a failed allocation would show instead)."""
    names = ["expanded", "overlapping", "sparse", "meta", "inflating record", "unfilled storage"]
    paths = [str(world / "cases" / n.replace(" ", "-") / "res" / "cifar100.pt") for n in names]
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *paths], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name, path, (code, err, exception) in zip(names, paths, json.loads(proc.stdout), strict=True):
        # the unfilled storage's allocation, virtual and never touched without the cap, now fails inside torch.load
        said = "cannot be read as a torch file, truncated or corrupt (" if name == "unfilled storage" else CASES[name]
        assert code == 4 and err.startswith(f"error: {path}: {said}") and "\n" not in err, (name, err, exception)
