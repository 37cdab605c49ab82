"""``mlfsic data ...``: the dataset subcommands.

``prepare NAME [key=value ...]``  generate coco-moji or check a dataset's files; ``prepare openmoji-corpus
                                  [regime= seed= n_images= image_size=]``: the teacher's corpus.
``check NAME [key=value ...]``    the validation report (images, labels, images per label and per split after
                                  the strict rule, missing or unreadable files, duplicate rows, images with no
                                  label, labels below K + Q); exit 2 when it finds a problem.
``split NAME [key=value ...]``    write a base/val/novel label split made from the data
                                  (``harness.protocol.split_maker``).

``key=value`` options are dataset config keys (``root=DIR`` is ``dataset.root=DIR``), and for check / split
their own keys, declared in ``harness.cli.options`` (``DataCheckOptions``, ``DataSplitOptions``; openmoji-corpus:
``CorpusOptions``). K + Q defaults to the run config's largest ``setting`` and its ``n_query`` (5 + 4).
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mlfsic.datasets import registry
from mlfsic.datasets.openmoji_corpus import load_or_build_corpus, summary
from mlfsic.harness.cli.options import (CorpusOptions, DataCheckOptions, DataSplitOptions, key_values,
                                        option_names, parse_key_values, unknown_option)
from mlfsic.harness.config import config_dir
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.io import write_text_atomic
from mlfsic.harness.protocol.episodes import parse_setting
from mlfsic.harness.protocol.split_maker import RULE, MadeSplit, SplitRule, make_split
from mlfsic.harness.protocol.splits import split_path



def data_prepare_command(name: str, options: list[str]) -> int:
    """``mlfsic data prepare NAME``: every key is a dataset config key (openmoji-corpus: ``CorpusOptions``)."""
    if name == "openmoji-corpus":
        return _corpus_prepare(options)
    values = key_values(options)
    with _unknown_dataset_key("data prepare", name, values, ()):
        print(registry.prepare_dataset(name, values))
    return 0


def data_check_command(name: str, options: list[str]) -> int:
    """``mlfsic data check NAME``: print the report; a problem found is one line after it and exit 2."""
    own, dataset_options = parse_key_values("data check", DataCheckOptions, options, passes=_any_key)
    config = _composed("data check", name, dataset_options, option_names(DataCheckOptions))
    rule = _rule(config, own)
    text, problems = registry.check_config(config["dataset"], rule.floor, own.open_images)
    print(text)
    if problems:
        raise MlfsicError(f"data check {name}: {len(problems)} problem(s): {'; '.join(problems)}")
    return 0


def data_split_command(name: str, options: list[str]) -> int:
    """``mlfsic data split NAME``: write the split file (default: the dataset's ``split_file``) and summarise it."""
    own, dataset_options = parse_key_values("data split", DataSplitOptions, options, passes=_any_key)
    config = _composed("data split", name, dataset_options, option_names(DataSplitOptions))
    cfg = config["dataset"]
    rule = _rule(config, own)
    registry.ensure_files(cfg)
    dataset = registry.load_dataset(cfg)  # as a sweep reads it
    out = _out_path(cfg, own.out)
    made = make_split(dataset, rule)
    command = " ".join(["mlfsic data split", name, *(shlex.quote(o) for o in options if not o.startswith("force="))])
    content = made.file_content(dataset, rule, command)
    if out.is_file() and _labels_of(out) != [content[key] for key in ("train", "val", "test")] \
            and not own.force:
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
def _any_key(key: str) -> bool:
    """check / split: a key that is not their own is a key of the dataset config."""
    return True


@contextlib.contextmanager
def _unknown_dataset_key(command: str, name: str, dataset_options: dict[str, str],
                         own: Sequence[str]) -> Iterator[None]:
    """An unknown top-level dataset key is the one unknown-option message of every subcommand, listing the
    subcommand's ``own`` options, then the keys of dataset ``name`` (its config and its adapter's short keys)."""
    try:
        yield
    except MlfsicError as error:
        key = next((k for k in dataset_options if f"unknown config key 'dataset.{k.lstrip('+')}'" in str(error)), None)
        if key is None or "." in key:
            raise
        raise unknown_option(command, key, [*own, *_dataset_keys(name)]) from None


def _dataset_keys(name: str) -> list[str]:
    """The keys of ``configs/dataset/<name>.yaml`` and the short keys of its adapter (``OPTION_KEYS``)."""
    import yaml

    cfg = yaml.safe_load((config_dir() / "dataset" / f"{name}.yaml").read_text()) or {}
    short = list(getattr(registry._adapter_of(cfg), "OPTION_KEYS", {}))
    return [*short, *(key for key in cfg if key not in short and not key.startswith("_"))]


def _composed(command: str, name: str, dataset_options: dict[str, str], own: Sequence[str]) -> dict[str, Any]:
    """The run config of dataset ``name`` with ``dataset_options`` as dataset keys."""
    with _unknown_dataset_key(command, name, dataset_options, own):
        return registry.composed_config(name, dataset_options)


def _rule(config: dict[str, Any], own: DataCheckOptions | DataSplitOptions) -> SplitRule:
    """K, Q (defaults: the run config's largest setting and n_query), seed and shares of check / split."""
    settings = config.get("setting") or ["5shot"]
    default_shot = max(parse_setting(str(s)) for s in (settings if isinstance(settings, list) else [settings]))
    shares = SplitRule().shares
    parts = getattr(own, "parts", None)
    if parts is not None:
        try:
            shares = tuple(float(part) for part in parts.split("/"))  # type: ignore[assignment]
        except ValueError:
            raise MlfsicError(f"data split option parts={parts!r}: expected base/val/test shares, e.g. "
                              "parts=65/15/20") from None
    rule = SplitRule(max_shot=default_shot if own.max_shot is None else own.max_shot,
                     n_query=int(config.get("n_query", 4)) if own.n_query is None else own.n_query,
                     seed=getattr(own, "seed", 0), shares=shares)
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


def _corpus_prepare(options: list[str]) -> int:
    """``mlfsic data prepare openmoji-corpus``: build (or find) the teacher's corpus and print its summary."""
    own, _ = parse_key_values("data prepare openmoji-corpus", CorpusOptions, options)
    cache = own.results_dir.resolve() / "cache" / "corpus"
    corpus = load_or_build_corpus(cache, own.regime, own.seed, own.n_images, own.image_size)
    print(json.dumps(summary(corpus), indent=1))
    return 0
