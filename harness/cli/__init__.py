"""The ``mlfsic`` command (docs/architecture.md §4.1); one module of this folder per subcommand.

    mlfsic run [HYDRA OVERRIDES...]      a sweep; prints the run dir
    mlfsic leaderboard DIR [...]         (re)build leaderboard.{csv,md,html} and the site of run/suite dirs; out=DIR
    mlfsic episodes [OVERRIDES...]       materialise episode sets; print id and path
    mlfsic data prepare NAME [k=v ...]   generate coco-moji (out=DIR seed=S preview=PATH) or check a dataset;
                                         openmoji-corpus [regime= seed= n_images= image_size=]: the teacher's corpus
    mlfsic data check NAME [k=v ...]     validate a dataset (root=DIR ...); exit 2 on a problem
    mlfsic data split NAME [k=v ...]     write a base/val/novel label split made from the data (seed= out= ...)
    mlfsic teacher train [OVERRIDES...]  retrain the pinned tiny CLIP teacher (+backbone=tiny-teacher-strict; out=DIR)
    mlfsic methods [method_modules=[m]]  list registered methods, their settings and origin
    mlfsic claims [ablation=DIR] [ranking=DIR] [out=DIR]   test the paper's claims; claims.{csv,json,md}

Two styles of ``key=value`` arguments: ``run``, ``episodes``, ``backbone train`` and ``teacher train`` take
Hydra overrides of the run config (configs/config.yaml); the other subcommands take their own options, declared
once each as a dataclass in ``harness.cli.options`` (``mlfsic <command> --help`` lists them with their types and
defaults) and parsed by one parser, so an unknown key or a bad value reads the same everywhere. ``explain`` also
passes a key with a ``.`` or a leading ``+`` on as a run-config override, and ``data`` a key that is not its own
on as a dataset config key (``root=DIR`` is ``dataset.root=DIR``).

Errors print one line (``mlfsic: error: ...``) and exit with code 2; a sweep with failed cells exits 1.
"""

from __future__ import annotations

import argparse
import sys

from mlfsic.harness.cli import options as schemas
from mlfsic.harness.errors import MlfsicError

RAW = argparse.RawDescriptionHelpFormatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlfsic", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run (or resume) a sweep, or with +suite=NAME every sweep of a suite")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=[protonet] setting=[1shot] "
                     "against=published, +backbone=tiny-teacher (open_clip image tower; adds mkt, clip-zeroshot); "
                     "every key is documented in configs/config.yaml; +suite=NAME (configs/suite/: coco-moji-all, "
                     "papers-all) or +suite=FILE.yaml runs a suite, against=published|SUITE_DIR per member")
    board = commands.add_parser("leaderboard", help="build the leaderboard and the static site of run or suite dirs",
                                formatter_class=RAW, epilog=schemas.options_epilog(schemas.LeaderboardOptions))
    board.add_argument("args", nargs="+", metavar="DIR",
                       help="run dirs or suite dirs, then key=value options (below)")
    episodes = commands.add_parser("episodes", help="materialise episode sets")
    episodes.add_argument("overrides", nargs="*")
    data = commands.add_parser("data", help="dataset utilities")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    dataset_keys = ("any other key is a key of the dataset config: root=DIR is dataset.root=DIR (metadata=, "
                    "annotations=, ...)")
    prepare = data_commands.add_parser(
        "prepare", help="generate coco-moji or check a dataset's files", formatter_class=RAW,
        epilog="every key=value is a key of the dataset config (root=DIR is dataset.root=DIR; coco-moji: out=DIR "
               "seed=S preview=PATH n_base= ...), except for openmoji-corpus, whose\n"
               + schemas.options_epilog(schemas.CorpusOptions))
    prepare.add_argument("name", help="coco-moji, openmoji-corpus, or a dataset config name (coco, ...)")
    prepare.add_argument("options", nargs="*", help="key=value options (below)")
    check = data_commands.add_parser("check", help="validate a dataset: images, labels, images per label and split, "
                                     "missing/unreadable files, labels below K + Q; exit 2 on a problem",
                                     formatter_class=RAW,
                                     epilog=schemas.options_epilog(schemas.DataCheckOptions, dataset_keys))
    check.add_argument("name", help="a dataset config name: imagefolder, coco-format, coco, voc, ...")
    check.add_argument("options", nargs="*", help="key=value: root=DIR and other dataset keys, and the options "
                       "below")
    split = data_commands.add_parser("split", help="write a base/val/novel label split made from the data",
                                     formatter_class=RAW,
                                     epilog=schemas.options_epilog(schemas.DataSplitOptions, dataset_keys))
    split.add_argument("name", help="a dataset config name: imagefolder, coco-format, ...")
    split.add_argument("options", nargs="*", help="key=value: root=DIR and other dataset keys, and the options "
                       "below (every val/novel label keeps K + Q images)")
    methods = commands.add_parser("methods", help="list registered methods (and one-file plug-ins: method_modules=[my_method])",
                                  formatter_class=RAW, epilog=schemas.options_epilog(schemas.MethodsOptions))
    methods.add_argument("options", nargs="*", help="key=value options (below)")
    methods.add_argument("--card", metavar="NAME", help="print one method's card: what it is, its hyperparameters "
                         "and its declared deviations from its paper or released code")
    claims = commands.add_parser("claims", help="test the paper's abstract claims on the ablation and ranking runs",
                                 formatter_class=RAW, epilog=schemas.options_epilog(schemas.ClaimsOptions))
    claims.add_argument("options", nargs="*", help="key=value options (below)")
    explain = commands.add_parser(
        "explain", help="PNG of the local positions LCM keeps and its attention", formatter_class=RAW,
        epilog=schemas.options_epilog(schemas.ExplainOptions, "a key with a '.' or a leading '+' is passed on as a "
                                      "run-config (Hydra) override, e.g. dataset.generate.n_base=400 or "
                                      "+method_args.lcm.steps=20"))
    explain.add_argument("options", nargs="*", help="key=value options (below) and run-config overrides "
                         "(measure=attention: base and val labels, out=X.json)")
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
        return _dispatch(args)
    except MlfsicError as error:
        print(f"mlfsic: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlfsic: interrupted; finished work is kept, re-run the same command to resume", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    """The subcommand's module, imported when it runs (``mlfsic methods`` does not import Ray or torch)."""
    if args.command == "run":
        from mlfsic.harness.cli.run import run_command

        return run_command(args.overrides)
    if args.command == "leaderboard":
        from mlfsic.harness.cli.leaderboard import leaderboard_command

        return leaderboard_command(args.args)
    if args.command == "episodes":
        from mlfsic.harness.cli.episodes import episodes_command

        return episodes_command(args.overrides)
    if args.command == "data":
        from mlfsic.harness.cli import data

        command = {"prepare": data.data_prepare_command, "check": data.data_check_command,
                   "split": data.data_split_command}[args.data_command]
        return command(args.name, args.options)
    if args.command == "claims":
        from mlfsic.harness.cli.claims import claims_command

        return claims_command(args.options)
    if args.command == "explain":
        from mlfsic.harness.cli.explain import explain_command

        return explain_command(args.options)
    if args.command == "teacher":
        from mlfsic.harness.cli.teacher import teacher_command

        return teacher_command(args.overrides)
    if args.command == "backbone":
        from mlfsic.harness.cli.backbone import train_command

        return train_command(args.overrides)
    from mlfsic.harness.cli.methods import methods_command

    return methods_command(args.options, card=args.card)
