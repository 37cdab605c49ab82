"""``mlfsic data prepare NAME [key=value ...]``: generate coco-moji or check a dataset's files; and
``mlfsic data prepare openmoji-corpus [regime= seed= n_images= image_size=]``: the teacher's corpus."""

from __future__ import annotations

import json
from pathlib import Path

from mlfsic.datasets.openmoji_corpus import load_or_build_corpus, summary
from mlfsic.datasets.registry import prepare_dataset
from mlfsic.harness.backbones.open_clip import TEACHER_DEFAULTS
from mlfsic.harness.cli.options import key_values
from mlfsic.harness.errors import MlfsicError


def data_prepare_command(name: str, options: list[str]) -> int:
    if name == "openmoji-corpus":
        return _corpus_prepare(key_values(options))
    print(prepare_dataset(name, key_values(options)))
    return 0


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
