"""The ``coco-moji`` adapter: generated on first use, then read like any COCO-format dataset.

Config keys (``configs/dataset/coco-moji.yaml``): those of the ``coco`` adapter plus ``generate``
(``seed``, ``image_size``, ``n_base``, ``n_val``, ``n_test``). ``mlfsic data prepare coco-moji`` takes the
short options ``out=DIR seed=S preview=PNG image_size=... n_base=... n_val=... n_test=...``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlfsic.datasets.coco import check_files, read  # noqa: F401  (the adapter's read and file check)
from mlfsic.datasets.coco_moji.generate import format_summary, generate_coco_moji
from mlfsic.harness.io import file_lock

# short option of ``mlfsic data prepare coco-moji`` -> key of the dataset config ("+": added key)
OPTION_KEYS = {"out": "root", "seed": "generate.seed", "image_size": "generate.image_size",
               "n_base": "generate.n_base", "n_val": "generate.n_val", "n_test": "generate.n_test",
               "preview": "+preview"}


@dataclass(frozen=True)
class Generated:
    """What ``mlfsic data prepare coco-moji`` prints: the generator's summary and the folder."""

    summary: dict[str, Any]

    def text(self) -> str:
        return f"{format_summary(self.summary)}\n{self.summary['out_dir']}"


def _generate(cfg: Mapping[str, Any], progress: bool, preview: Path | None = None) -> dict[str, Any]:
    generate = cfg["generate"]
    return generate_coco_moji(Path(str(cfg["root"])), seed=int(generate["seed"]), image_size=int(generate["image_size"]),
                              n_base=int(generate["n_base"]), n_val=int(generate["n_val"]), n_test=int(generate["n_test"]),
                              preview=preview, progress=progress)


def ensure_files(cfg: Mapping[str, Any], progress: bool = True) -> None:
    """Generate the scenes into ``cfg.root`` unless its annotation file is there already.

    One process generates at a time (a lock file beside the folder): two sweeps started at once on a fresh
    results dir would otherwise both render the whole dataset; the second waits, then finds it made.
    """
    root = Path(str(cfg["root"]))
    if (root / str(cfg["annotations"])).is_file():
        return
    with file_lock(root.parent / f".{root.name}.lock"):
        if not (root / str(cfg["annotations"])).is_file():
            _generate(cfg, progress)


def prepare(cfg: Mapping[str, Any]) -> Generated:
    """Generate (or reuse) the dataset, with a contact sheet when ``preview`` is set."""
    preview = cfg.get("preview")
    return Generated(_generate(cfg, True, Path(str(preview)) if preview else None))
