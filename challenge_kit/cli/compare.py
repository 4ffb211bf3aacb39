"""``ddkit compare``: sets side by side on paired scorer rounds, with a verdict; the table it prints."""

from __future__ import annotations

from typing import Annotated

import typer

from challenge_kit.cli.options import (
    BASELINE_METHODS,
    CacheDir,
    DatasetOption,
    Device,
    JsonObject,
    ScoreEpochs,
    ScoreModels,
    choice,
    completion,
    out_folder,
    seed_option,
)
from challenge_kit.core.contract import ARCHITECTURES, CHALLENGE_NET

BASELINES = ("random", "init", *BASELINE_METHODS[1:])


def compare(
    sets: Annotated[list[str], typer.Argument(metavar="SET...", help="the sets, the first is what the others are "
                                              "measured against: .pt submissions, make-submission folders, kit "
                                              ".safetensors")],
    reference: Annotated[str, typer.Option("--reference", metavar="FILE",
                                           help="test set: dict of images_val, labels_val")],
    out: Annotated[str, out_folder("folder for rounds.json (every round scored: a rerun resumes), compare.json and "
                                   "compare.png")],
    labels: Annotated[list[str] | None, typer.Option(
        "--label", metavar="NAME", help="a short name for each set, in order, for the table and the figure "
                                        "(default: the shortest part of each path that tells them apart)")] = None,
    baseline: Annotated[list[str] | None, typer.Option(
        "--baseline", metavar="NAME", parser=choice("baseline", BASELINES), autocompletion=completion(BASELINES),
        help="random (random real training images, needs --data-root), init (the initialization of each "
             "make-submission folder among the sets) or a coreset of real images, as `ddkit baseline --method` "
             "picks it (herding, kcenter, el2n_easy|hard|band, forgetting_easy|hard|band; needs --data-root); "
             "repeatable")] = None,
    archs: Annotated[list[str] | None, typer.Option(
        "--arch", metavar="NET", parser=choice("architecture", ARCHITECTURES), autocompletion=completion(ARCHITECTURES),
        help="also train every set on this network with the scorer's recipe otherwise unchanged: "
             f"{', '.join(a for a in ARCHITECTURES if a != CHALLENGE_NET)} (docs/baselines.md); its table is not "
             "the official score, which is the challenge ConvNet's; repeatable")] = None,
    rounds: Annotated[int, typer.Option("--rounds", metavar="R", help="paired rounds, the same seeds for every set")
                      ] = 5,
    epochs: Annotated[int | None, typer.Option("--epochs", metavar="E", help="epochs per round (default: the "
                                                                             "scorer's 1001)")] = None,
    seed: Annotated[int, seed_option("round r's seed is SEED * 1000 + r")] = 1000,
    data_root: Annotated[str | None, typer.Option("--data-root", metavar="ROOT",
                                                  help="real data, for every baseline but init")] = None,
    baseline_seed: Annotated[int, seed_option("which random images, the coresets' proxy networks (as `ddkit "
                                              "baseline --seed`)", "--baseline-seed")] = 0,
    score_epochs: ScoreEpochs = 10,
    score_models: ScoreModels = 2,
    dataset: DatasetOption = None,
    device: Device = None,
    fast: Annotated[bool, typer.Option("--fast", help="score with the fast scorer (bfloat16, compiled where "
                                                      "possible): same recipe, not the leaderboard's arithmetic")
                    ] = False,
    cache_dir: CacheDir = None,
    as_json: JsonObject = False,
) -> None:
    """Is a set better than another, than real images, on other networks? Paired rounds, mean +- s.e., a verdict."""
    from challenge_kit.cli import render
    from challenge_kit.compare import baseline_entries, check_baselines, check_budget, load_sets
    from challenge_kit.compare import compare as run
    from challenge_kit.core.devices import usable_device
    from challenge_kit.core.folders import output_folder
    from challenge_kit.coresets import check_method
    from evaluator.scorer import EPOCHS

    epochs = EPOCHS if epochs is None else epochs
    check_budget(rounds, epochs)
    check_baselines(baseline or [], data_root)
    check_method("random", epochs=score_epochs, models=score_models)
    output_folder(out)
    dev = usable_device(device)
    entries, spec, test = load_sets(sets, reference, dataset, labels)
    entries += baseline_entries(baseline or [], sets, spec, data_root=data_root, seed=baseline_seed,
                                cache_dir=cache_dir, score_epochs=score_epochs, score_models=score_models, device=dev,
                                names=[e.name for e in entries])
    result = run(entries, spec, test, out, rounds=rounds, epochs=epochs, seed=seed, device=dev,
                 extra={"reference": reference}, mode="fast" if fast else "faithful", archs=archs or [])
    render.show(result, as_json, table)


def judgement(d: dict | None) -> str:
    """A paired difference as ``+0.0123 +- 0.0040 (3.1 s.e.)``."""
    if d is None:
        return "-"
    tells = f"{d['z']:+.1f} s.e." if d["z"] is not None else ("equal" if d["mean"] == 0 else "no spread")
    return f"{d['mean']:+.4f} +- {d['se']:.4f} ({tells})"


def rounds_needed(d: dict | None, rounds: int) -> str:
    if d is None or d["rounds_to_tell"] is None:
        return "-"
    n = d["rounds_to_tell"]
    return f"{n} (enough)" if n <= rounds else f"{n} ({n - rounds} more)"


def table(result: dict) -> None:
    """The challenge ConvNet's table, then one per other network (``--arch``), each titled as such."""
    from challenge_kit.core.progress import make_console

    console = make_console()
    console.print(_table(result, result["sets"], ""))
    for other in result.get("architectures") or []:
        console.print(_table(result, other["sets"], f"{other['label']}\n"))


def _table(result: dict, rows: list[dict], network: str):
    from rich.markup import escape
    from rich.table import Table

    rounds = result["rounds"]
    baselines = [r["name"] for r in rows if r["baseline"]]
    fast = (result.get("scorer") or {}).get("mode") == "fast"
    table = Table(title=f"{escape(network)}{result['dataset']}\n{'fast ' if fast else ''}scorer recipe on "
                        f"{result['test_images']} test images, "
                        f"{result['epochs']} epochs x {rounds} paired rounds (seeds {result['seeds'][0]}..), "
                        f"{result['device']}",
                  caption=f"every set trained with default-order hard labels, as the scorer does; differences are "
                          f"to the first set, {escape(rows[0]['name'])}; verdicts at {result['tells']:g} s.e.")
    for column in ("set", "accuracy (mean +- s.e.)", "paired difference", "verdict", "rounds to tell",
                   *(f"gain over {b}" for b in baselines)):
        table.add_column(column, justify="left" if column in ("set", "verdict") else "right")
    for r in rows:
        name = escape(r["name"]) + "".join(f"\n[dim]{escape(extra)}[/dim]" for extra in (
            r["source"] if r["source"] != r["name"] and not r["baseline"] else "", r["note"]) if extra)
        d = r["difference"]
        table.add_row(name, f"{r['mean']:.4f} +- {r['se']:.4f}", judgement(d), "-" if d is None else d["verdict"],
                      rounds_needed(d, rounds), *(judgement(r["gains"].get(b)) for b in baselines))
    return table
