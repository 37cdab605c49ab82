"""``mlfsic data ...``: the dataset subcommands.

``prepare NAME [key=value ...]``  generate coco-moji or check a dataset's files; ``prepare openmoji-corpus
                                  [regime= seed= n_images= image_size=]``: the teacher's corpus.
``check NAME [key=value ...]``    the validation report (images, labels, images per label and per split after
                                  the strict rule, missing or unreadable files, duplicate rows, images with no
                                  label, labels below K + Q); exit 2 when it finds a problem.
``split NAME [key=value ...]``    write a base/val/novel label split made from the data
                                  (``harness.protocol.split_maker``).

``key=value`` options are dataset config keys (``root=DIR`` is ``dataset.root=DIR``), and for check / split
their own keys (``CHECK_KEYS``, ``SPLIT_KEYS``). K + Q defaults to the run config's largest ``setting`` and its
``n_query`` (5 + 4).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from mlfsic.datasets import registry
from mlfsic.datasets.openmoji_corpus import load_or_build_corpus, summary
from mlfsic.harness.backbones.open_clip import TEACHER_DEFAULTS
from mlfsic.harness.cli.options import key_values
from mlfsic.harness.config import config_dir
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import write_text_atomic
from mlfsic.harness.protocol.episodes import parse_setting
from mlfsic.harness.protocol.split_maker import RULE, MadeSplit, SplitRule, make_split
from mlfsic.harness.protocol.splits import split_path

CHECK_KEYS = ("max_shot", "n_query", "open_images")
SPLIT_KEYS = ("seed", "out", "max_shot", "n_query", "parts", "force")


def data_prepare_command(name: str, options: list[str]) -> int:
    if name == "openmoji-corpus":
        return _corpus_prepare(key_values(options))
    print(registry.prepare_dataset(name, key_values(options)))
    return 0


def data_check_command(name: str, options: list[str]) -> int:
    """``mlfsic data check NAME``: print the report; a problem found is one line after it and exit 2."""
    own, dataset_options = _own_options(options, CHECK_KEYS)
    config = _composed(name, dataset_options, CHECK_KEYS)
    rule = _rule(config, own)
    text, problems = registry.check_config(config["dataset"], rule.floor, _boolean(own, "open_images", True))
    print(text)
    if problems:
        raise MlfsicError(f"data check {name}: {len(problems)} problem(s): {'; '.join(problems)}")
    return 0


def data_split_command(name: str, options: list[str]) -> int:
    """``mlfsic data split NAME``: write the split file (default: the dataset's ``split_file``) and summarise it."""
    own, dataset_options = _own_options(options, SPLIT_KEYS)
    config = _composed(name, dataset_options, SPLIT_KEYS)
    cfg = config["dataset"]
    rule = _rule(config, own)
    registry.ensure_files(cfg)
    dataset = registry.load_dataset(cfg)  # as a sweep reads it
    out = _out_path(cfg, own.get("out"))
    made = make_split(dataset, rule)
    command = " ".join(["mlfsic data split", name, *(shlex.quote(o) for o in options if not o.startswith("force="))])
    content = made.file_content(dataset, rule, command)
    if out.is_file() and _labels_of(out) != [content[key] for key in ("train", "val", "test")] \
            and not _boolean(own, "force", False):
        raise MlfsicError(f"{out} exists and holds another split; force=true replaces it (runs that used it keep "
                          "their records), or out=OTHER.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(content, indent=1, ensure_ascii=False) + "\n")
    print(_made_summary(made, rule, out))
    run = ["mlfsic run", f"dataset={name}", *(f"dataset.{key}={shlex.quote(value)}" for key, value in dataset_options.items())]
    if str(cfg.get("split_file")) != str(out):
        run.append(f"dataset.split_file={shlex.quote(str(out.resolve()))}")
    print("next: " + " ".join(run))
    return 0


def _made_summary(made: MadeSplit, rule: SplitRule, out: Path) -> str:
    """What ``mlfsic data split`` says about the split it wrote."""
    counts = {part: len(labels) for part, labels in made.parts.items()}
    per_split = ", ".join(f"{part} {n}" for part, n in made.images_per_split.items())
    fewest = ", ".join(f"{part} {n}" for part, n in made.min_images_per_label.items())
    lines = [(f"wrote {out}: base {counts['base']} / val {counts['val']} / test {counts['test']} labels "
              f"(rule {RULE}, seed {rule.seed}, K + Q = {rule.max_shot} + {rule.n_query})"),
             (f"  images per split (an image is in a split only if all its labels are): {per_split}; "
              f"labelled images in no split {made.images_in_no_split}"),
             f"  fewest images of a label in its split's pool: {fewest}"]
    if made.base_only:
        lines.append(f"  base only (fewer than {rule.floor} images in all): {', '.join(made.base_only[:12])}"
                     + (f", ... ({len(made.base_only)} in all)" if len(made.base_only) > 12 else ""))
    lines.extend(f"  repair: {step}" for step in made.repairs)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ options
def _own_options(options: list[str], keys: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
    """(the subcommand's own ``keys``, the dataset config keys) of ``key=value`` options."""
    values = key_values(options)
    return {k: v for k, v in values.items() if k in keys}, {k: v for k, v in values.items() if k not in keys}


def _composed(name: str, dataset_options: dict[str, str], keys: tuple[str, ...]) -> dict[str, Any]:
    """The run config of dataset ``name``; an unknown key also lists the subcommand's own ``keys``."""
    try:
        return registry.composed_config(name, dataset_options)
    except MlfsicError as error:
        if "unknown config key" not in str(error):
            raise
        raise MlfsicError(f"{error}, or one of {', '.join(keys)}") from None


def _integer(own: dict[str, str], key: str, default: int, minimum: int) -> int:
    value = own.get(key)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise MlfsicError(f"{key}={value}: expected an integer >= {minimum}")
    return number


def _boolean(own: dict[str, str], key: str, default: bool) -> bool:
    value = own.get(key)
    if value is None:
        return default
    if value.lower() not in ("true", "false"):
        raise MlfsicError(f"{key}={value}: expected true or false")
    return value.lower() == "true"


def _rule(config: dict[str, Any], own: dict[str, str]) -> SplitRule:
    """K, Q (defaults: the run config's largest setting and n_query), seed and shares of check / split."""
    settings = config.get("setting") or ["5shot"]
    default_shot = max(parse_setting(str(s)) for s in (settings if isinstance(settings, list) else [settings]))
    shares = SplitRule().shares
    if "parts" in own:
        try:
            shares = tuple(float(part) for part in own["parts"].split("/"))  # type: ignore[assignment]
        except ValueError:
            raise MlfsicError(f"parts={own['parts']}: expected base/val/test shares, e.g. parts=65/15/20") from None
    rule = SplitRule(max_shot=_integer(own, "max_shot", default_shot, 0),
                     n_query=_integer(own, "n_query", int(config.get("n_query", 4)), 1),
                     seed=_integer(own, "seed", 0, 0), shares=shares)
    rule.check()
    return rule


def _labels_of(path: Path) -> list[Any] | None:
    """The train/val/test lists of an existing split file (None when it is not one)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return [raw["train"], raw["val"], raw["test"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _out_path(cfg: dict[str, Any], out: str | None) -> Path:
    """``out=`` or the dataset's split file; never a shipped file of configs/splits/ unless named."""
    if out:
        return Path(out).expanduser()
    path = split_path(str(cfg.get("split_file")))
    if config_dir() in path.resolve().parents:
        raise MlfsicError(f"dataset {cfg.get('name')!r} uses the shipped split {path.name}; write yours elsewhere: "
                          "out=/path/split.json (then dataset.split_file=/path/split.json)")
    return path


def _corpus_prepare(options: dict[str, str]) -> int:
    """``mlfsic data prepare openmoji-corpus``: build (or find) the teacher's corpus and print its summary."""
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
