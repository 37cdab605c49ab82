"""The ``mlfsic`` command (docs/architecture.md §4.1).

    mlfsic run [HYDRA OVERRIDES...]      a sweep; prints the run dir
    mlfsic leaderboard RUN_DIR [...]     (re)build leaderboard.{csv,md,html}; out=DIR relocates them
    mlfsic episodes [OVERRIDES...]       materialise episode sets; print id and path
    mlfsic data prepare NAME [k=v ...]   generate coco-moji (out=DIR seed=S preview=PATH) or check a dataset;
                                         openmoji-corpus [regime= seed= n_images= image_size=]: the teacher's corpus
    mlfsic teacher train [OVERRIDES...]  retrain the pinned tiny CLIP teacher (+backbone=tiny-teacher-strict; out=DIR)
    mlfsic methods                       list registered methods, their settings and origin
    mlfsic claims [ablation=DIR] [ranking=DIR] [out=DIR]   test the paper's claims; claims.{csv,json,md}

Errors print one line (``mlfsic: error: ...``) and exit with code 2; a sweep with failed cells exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlfsic.harness.errors import MlfsicError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlfsic", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or resume) a sweep")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=[protonet] setting=[1shot] "
                     "against=published, +backbone=tiny-teacher (open_clip image tower; adds mkt, clip-zeroshot); "
                     "every key is documented in configs/config.yaml")
    board = commands.add_parser("leaderboard", help="build the leaderboard of one or more run dirs")
    board.add_argument("args", nargs="+", metavar="RUN_DIR",
                       help="run dirs, then options: out=DIR (where the board goes), against=published|RUN_DIR "
                            "(rank against a reference run), publish=true (copy one complete run into "
                            "results/published; no RUN_DIR: the default sweep's)")
    episodes = commands.add_parser("episodes", help="materialise episode sets")
    episodes.add_argument("overrides", nargs="*")
    data = commands.add_parser("data", help="dataset utilities")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    prepare = data_commands.add_parser("prepare", help="generate coco-moji or check a dataset's files")
    prepare.add_argument("name", help="coco-moji, openmoji-corpus, or a dataset config name (coco, ...)")
    prepare.add_argument("options", nargs="*", help="key=value options")
    commands.add_parser("methods", help="list registered methods")
    claims = commands.add_parser("claims", help="test the paper's abstract claims on the ablation and ranking runs")
    claims.add_argument("options", nargs="*",
                        help="key=value: ablation=DIR (default results/published_ablation, a val-split run of "
                             "+sweep=lcm_ablation) ranking=DIR (default results/published) out=DIR (default: "
                             "claims/ next to the ablation dir)")
    explain = commands.add_parser("explain", help="PNG of the local positions LCM keeps and its attention")
    explain.add_argument("options", nargs="*",
                         help="key=value: method=lcm setting=1shot seed=0 episode=0 split=val|test n_images=4 "
                              "max_labels out=X.png theta threshold_mode=sigmoid|relative dataset results_dir; "
                              "measure=boxes|attention [n_episodes=50] (attention: base and val labels, out=X.json); "
                              "keys with '.' or '+' are run-config overrides")
    backbone = commands.add_parser("backbone", help="benchmark backbone utilities")
    backbone_commands = backbone.add_subparsers(dest="backbone_command", required=True)
    backbone_train = backbone_commands.add_parser("train", help="retrain the pinned benchmark backbone")
    backbone_train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset=coco-moji; out=DIR or "
                                "out=FILE.pt also writes small_cnn-<sha12>.pt (never the shipped file unless out= names it)")
    teacher = commands.add_parser("teacher", help="the tiny CLIP teacher")
    teacher_commands = teacher.add_subparsers(dest="teacher_command", required=True)
    teacher_train = teacher_commands.add_parser("train", help="retrain the pinned tiny CLIP teacher")
    teacher_train.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. +backbone=tiny-teacher-strict; "
                               "out=DIR also writes tiny_teacher-<regime>-<sha12>.pt and its .json")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.overrides)
        if args.command == "leaderboard":
            return _leaderboard(args.args)
        if args.command == "episodes":
            return _episodes(args.overrides)
        if args.command == "data":
            return _data_prepare(args.name, args.options)
        if args.command == "claims":
            return _claims(args.options)
        if args.command == "explain":
            from mlfsic.harness.report.explain import explain_command

            return explain_command(_key_values(args.options))
        if args.command == "teacher":
            from mlfsic.harness.backbones.tiny_teacher import teacher_command

            return teacher_command(args.overrides)
        if args.command == "backbone":
            from mlfsic.harness.backbones.small_cnn import train_command

            return train_command(args.overrides)
        return _methods()
    except MlfsicError as error:
        print(f"mlfsic: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlfsic: interrupted; finished work is kept, re-run the same command to resume", file=sys.stderr)
        return 130


def _key_values(options: list[str]) -> dict[str, str]:
    values = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or not key:
            raise MlfsicError(f"expected key=value, got {option!r}")
        values[key] = value
    return values


def _run(overrides: list[str]) -> int:
    from mlfsic.harness.report.leaderboard import build_leaderboard
    from mlfsic.harness.sweep.runner import run_sweep
    from mlfsic.harness.sweep.spec import load_sweep

    sweep = load_sweep(overrides)  # every key validated here, before Ray starts or anything is written
    outcome = run_sweep(sweep)  # with against=: checked against the reference before any work
    paths = build_leaderboard([outcome.run_path], outcome.run_path, against=sweep.against)
    print(Path(paths["md"]).read_text())
    counts = outcome.counts
    print(f"chunks: {counts['chunks_total']} planned, {counts['chunks_skipped']} already done, "
          f"{counts['chunks_submitted']} computed; fits: {counts['fits_trained']} trained, "
          f"{counts['fits_cached']} from checkpoints", file=sys.stderr)
    for failure in outcome.failures:
        print(f"FAILED {failure['method']} {failure['setting']} seed{failure['seed']}: {failure['error']}", file=sys.stderr)
    print(outcome.run_path)
    return 1 if outcome.failures else 0


def _leaderboard(args: list[str]) -> int:
    """``mlfsic leaderboard RUN_DIR... [out=DIR] [against=published|RUN_DIR] [publish=true]``.

    ``against``: rank the runs together with a reference run, on their episode sets (harness.reference_run).
    ``publish=true``: copy one finished run (default: the default sweep's) into out= (default: the
    repository's results/published) as the reference ``against=published`` reads, with leaderboard.{csv,md}.
    """
    from mlfsic.harness.sweep.against_run import PUBLISHED_DIR, publish, resolve_against
    from mlfsic.harness.report.leaderboard import build_leaderboard

    run_dirs = [Path(a) for a in args if "=" not in a]
    options = _key_values([a for a in args if "=" in a])
    unknown = set(options) - {"out", "against", "publish"}
    if unknown:
        raise MlfsicError(f"unknown leaderboard option {sorted(unknown)[0]!r} (known: out, against, publish)")
    if options.get("publish", "false") not in ("true", "false"):
        raise MlfsicError(f"publish={options['publish']}: expected true or false")
    if options.get("publish") == "true":
        if "against" in options or len(run_dirs) > 1:
            raise MlfsicError("publish=true takes one RUN_DIR (default: the default sweep's) and no against=")
        if not run_dirs:
            from mlfsic.harness.sweep.spec import load_sweep

            run_dirs = [load_sweep([]).run_path]
        out = Path(options.get("out", str(PUBLISHED_DIR)))
        written = publish(run_dirs[0], out)
        paths = build_leaderboard([out], out, formats=("csv", "md"))
        print(Path(paths["md"]).read_text())
        for path in [*written, *paths.values()]:
            print(path)
        return 0
    if not run_dirs:
        raise MlfsicError("give at least one RUN_DIR")
    out = Path(options["out"]) if "out" in options else run_dirs[0]
    paths = build_leaderboard(run_dirs, out, against=resolve_against(options.get("against")))
    print(Path(paths["md"]).read_text())
    for path in paths.values():
        print(path)
    return 0


def _claims(options: list[str]) -> int:
    """``mlfsic claims [ablation=DIR] [ranking=DIR] [out=DIR]`` (harness.report.claims)."""
    from mlfsic.harness.report.claims import run_claims

    values = _key_values(options)
    unknown = sorted(set(values) - {"ablation", "ranking", "out"})
    if unknown:
        raise MlfsicError(f"unknown claims option {unknown[0]!r} (known: ablation, ranking, out)")
    given = {key: Path(value) for key, value in values.items()}
    text, paths = run_claims(ablation=given.get("ablation"), ranking=given.get("ranking"), out=given.get("out"))
    print(text)
    for path in paths.values():
        print(path)
    return 0


def _episodes(overrides: list[str]) -> int:
    from mlfsic.harness.protocol.data import split_pool
    from mlfsic.harness.protocol.episodes import materialise_episode_sets
    from mlfsic.harness.sweep.prepare import load_dataset_and_split
    from mlfsic.harness.sweep.spec import load_sweep

    sweep = load_sweep(overrides)
    dataset, split = load_dataset_and_split(sweep.dataset_config())
    pool = split_pool(dataset, sweep.eval_split, split[sweep.eval_split])
    for ref in materialise_episode_sets(pool, sweep):
        print(f"{ref.episode_set_id}  {ref.setting}  seed{ref.seed}  {ref.path}")
    return 0


def _data_prepare(name: str, options: list[str]) -> int:
    from mlfsic.datasets.registry import prepare_dataset

    if name == "openmoji-corpus":
        return _corpus_prepare(_key_values(options))
    print(prepare_dataset(name, _key_values(options)))
    return 0


def _corpus_prepare(options: dict[str, str]) -> int:
    """``mlfsic data prepare openmoji-corpus``: build (or find) the teacher's corpus and print its summary."""
    import json

    from mlfsic.datasets.openmoji_corpus import load_or_build_corpus, summary
    from mlfsic.harness.backbones.tiny_teacher import TEACHER_DEFAULTS

    known = {"regime", "seed", "n_images", "image_size", "results_dir"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise MlfsicError(f"data prepare openmoji-corpus: unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
    try:
        seed = int(options.get("seed", TEACHER_DEFAULTS["corpus_seed"]))
        n_images = int(options.get("n_images", TEACHER_DEFAULTS["corpus_images"]))
        image_size = int(options.get("image_size", 96))
    except ValueError as error:
        raise MlfsicError(f"data prepare openmoji-corpus: seed, n_images and image_size are integers ({error})") from None
    cache = Path(options.get("results_dir", "results")).resolve() / "cache" / "corpus"
    corpus = load_or_build_corpus(cache, options.get("regime", str(TEACHER_DEFAULTS["regime"])), seed, n_images,
                                  image_size)
    print(json.dumps(summary(corpus), indent=1))
    return 0


def _methods() -> int:
    from mlfsic.methods.registry import available_methods, broken_methods

    rows = [(info.name, info.cls.settings_label(),
             ("local" if info.cls.needs_local_features else "global") + (", open_clip" if info.cls.needs_clip else ""),
             info.origin) for info in available_methods().values()]
    rows += [(info.name, f"BROKEN: {info.error}", "-", f"{info.origin} ({info.target})")
             for info in broken_methods().values()]
    header = ("method", "settings", "features", "origin")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())
    return 0

