"""docs/research.md's own part and recipe, taken from the page as written: they load, ``ddkit methods`` lists the
part with its parameter, a mistake in it is the page's one line, and the part picks what the page says it picks (the
IPC images of each class nearest their class's mean, after ``skip``), checked against a plain loop."""

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from challenge_kit.cli import app
from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitError
from challenge_kit.recipes import load_recipe

PAGE = Path(__file__).resolve().parents[2] / "docs" / "research.md"


def block(language: str, first_line: str) -> str:
    """The page's fenced ``language`` block whose first line is ``first_line``, without that line."""
    for body in re.findall(rf"^```{language}\n(.*?)^```", PAGE.read_text(), re.M | re.S):
        head, _, rest = body.partition("\n")
        if head == first_line:
            return rest
    raise AssertionError(f"docs/research.md has no ```{language} block opening with {first_line!r}")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The page's my_parts.py and class_mean.toml in a folder on the path (a child's too), as the page has them."""
    (tmp_path / "my_parts.py").write_text(block("python", "# my_parts.py"))
    (tmp_path / "class_mean.toml").write_text(block("toml", "# class_mean.toml"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    monkeypatch.delitem(sys.modules, "my_parts", raising=False)  # the page's, not a stale copy
    return tmp_path


def test_the_pages_recipe_loads_and_methods_lists_its_part(folder):
    recipe = load_recipe(str(folder / "class_mean.toml"), dataset="tinyimagenet", profile="quick")
    assert recipe.to_dict()["distill"]["init"] == {"name": "my_parts:ClassMean", "skip": 0}
    listed = CliRunner().invoke(app, ["methods", "--recipe", str(folder / "class_mean.toml"), "--json"])
    assert listed.exit_code == 0, listed.output
    mine = [p for p in json.loads(listed.stdout)["parts"] if p["source"] == "user (my_parts)"]
    assert [(p["kind"], p["name"], p["params"]) for p in mine] == [("init", "my_parts:ClassMean", {"skip": 0})]


def test_the_pages_mistake_is_its_one_line(folder):
    line = next(x for x in PAGE.read_text().splitlines() if x.startswith("error: ") and "skp" in x)
    with pytest.raises(KitError) as raised:
        load_recipe(str(folder / "class_mean.toml"), dataset="tinyimagenet", profile="quick",
                    overrides=["distill.init.skp=1"])
    assert f"error: {raised.value}" == line


@pytest.mark.parametrize("skip", [0, 2])
def test_the_pages_part_picks_the_images_nearest_their_class_mean(folder, skip):
    from my_parts import ClassMean

    spec = DatasetSpec(name="tiny", num_classes=3, image_size=2, ipc=2, mean=(0.0,) * 3, std=(1.0,) * 3)
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([2, 0, 1, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    images = torch.randn(len(labels), 3, 2, 2, generator=gen)
    ctx = type("Ctx", (), {"spec": spec, "images": images, "labels": labels})()
    expected = []
    for c in range(3):  # default order: class 0's images first; within a class, nearest the mean first
        mine = [i for i in range(len(labels)) if labels[i] == c]
        mean = sum(images[i] for i in mine) / len(mine)
        by_distance = sorted(mine, key=lambda i: float(((images[i] - mean) ** 2).sum()))
        expected += by_distance[skip:skip + spec.ipc]
    assert torch.equal(ClassMean(skip=skip)(ctx), images[expected])
