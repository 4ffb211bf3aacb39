"""The kit as a user installs it: a wheel, in a fresh environment, away from this checkout. The recipes ship inside
it, the command runs from any folder, and its declared dependencies are met by what the tests ran with.

Nothing is downloaded: the wheel is built with the installed setuptools, and the venv sees the packages the tests
run with (the running interpreter's site folders, named in a ``.pth`` file: in a virtualenv ``--system-site-packages``
would show the base interpreter's instead); pip installs with ``--no-index``, so a dependency bound nothing installed
meets fails here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from challenge_kit.recipes import read_toml

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "challenge_kit", "evaluator", "submissions")

# In the venv, away from the checkout: where the kit and its recipes come from, and every shipped recipe in every
# profile its dataset has.
LOAD_ALL = """
import json, challenge_kit
from challenge_kit.recipes import RECIPE_DIR, load_recipe, read_toml
loaded = []
for dataset in sorted(p.stem for p in RECIPE_DIR.glob("*.toml")):
    for profile in ["full", *read_toml(RECIPE_DIR / f"{dataset}.toml").get("profiles", {})]:
        loaded.append(load_recipe(dataset, profile).method)
        for method in sorted(p.stem for p in (RECIPE_DIR / "research").glob("*.toml")):
            loaded.append(load_recipe(method, profile, dataset=dataset).method)
print(json.dumps({"package": challenge_kit.__file__, "recipes": str(RECIPE_DIR), "loaded": loaded}))
"""


def run(args: list, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def shipped(root: Path, pattern: str) -> set[str]:
    return {str(p.relative_to(root)) for p in root.glob(pattern) if "__pycache__" not in p.parts}


@pytest.mark.slow
def test_the_wheel_ships_the_recipes_and_runs_outside_the_checkout(tmp_path):
    source = tmp_path / "source"  # a copy: an in-tree build would write build/ and *.egg-info into the checkout
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--wheel-dir", tmp_path / "dist", source], cwd=tmp_path)
    wheel, = (tmp_path / "dist").glob("ddkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = shipped(REPO, "challenge_kit/**/__init__.py") | shipped(REPO, "evaluator/**/__init__.py")
    assert packages <= names, f"packages missing from pyproject.toml's list: {sorted(packages - names)}"
    recipes = {f"challenge_kit/recipes_data/{name}" for name in shipped(REPO / "submissions", "**/*.toml")}
    assert len(recipes) >= 9 and recipes <= names, sorted(recipes - names)

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
                   .strip())
    ours = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (purelib / "tests-packages.pth").write_text("".join(f"{p}\n" for p in ours))
    # without PYTHONPATH: a checkout on it (its ddkit.egg-info) would read to pip as ddkit already installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-index", "--quiet", wheel], cwd=tmp_path,
        env=env)

    away = tmp_path / "elsewhere"
    away.mkdir()
    methods = {Path(name).stem for name in shipped(REPO / "submissions", "research/*.toml")}
    listing = json.loads(run([venv / "bin" / "ddkit", "methods", "--json"], cwd=away, env=env))
    assert {m["name"] for m in listing["methods"]} == methods

    found = json.loads(run([python, "-c", LOAD_ALL], cwd=away, env=env))
    site = Path(found["package"]).resolve().parent.parent
    assert site.is_relative_to(venv.resolve()), found["package"]  # not the checkout, not an editable install
    assert Path(found["recipes"]).resolve() == site / "challenge_kit" / "recipes_data"
    profiles = sum(1 + len(read_toml(path).get("profiles", {})) for path in (REPO / "submissions").glob("*.toml"))
    assert len(found["loaded"]) == (1 + len(methods)) * profiles  # every recipe in every profile of its dataset
