"""Export is a function of the content: the same run gives the same bytes, file by file."""

from fakes import write_run

from challenge_kit.core.contract import CIFAR100
from challenge_kit.export import export_run

SUBSET = CIFAR100.subset(5)


def test_identical_content_gives_identical_bytes(tmp_path):
    names = ("run/best.safetensors", "out/cifar100.pt", "out/manifest.json", "out/preview.png")
    first = {}
    for _ in range(2):
        write_run(tmp_path / "run", SUBSET)  # best.safetensors: several metadata keys
        export_run(tmp_path / "run", tmp_path / "out", overwrite=True)  # the second export replaces the first
        for name in names:
            first.setdefault(name, (tmp_path / name).read_bytes())
            assert (tmp_path / name).read_bytes() == first[name], name
