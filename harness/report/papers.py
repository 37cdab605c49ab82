"""Paper-reported numbers (``configs/reference/*.yaml``), shown as *reported*, never ranked or paired.

Each file holds ``entries:``, a list of mappings with

    method    name as the paper prints it (e.g. "LaSO")
    dataset   our dataset name (e.g. "coco"); rows appear only on leaderboards that cover it
    setting   "0shot", "1shot", "5shot", ...
    map       mAP in percent, exactly as printed in the paper
    paper     full citation (authors, title, venue, year)
    table     where the number is printed (e.g. "Table 2, row 'LaSO', column '1-shot'")
    note      optional: protocol differences (e.g. LaSO's fixed-support protocol vs episodic-v1)

A number belongs in these files only when it has been read in the cited table; nothing is estimated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from mlfsic.harness.errors import MlfsicError

REQUIRED = ("method", "dataset", "setting", "map", "paper", "table")


def default_reference_dir() -> Path:
    import mlfsic.configs

    return Path(mlfsic.configs.__file__).resolve().parent / "reference"


def _entry_row(path: Path, index: int, entry: Any) -> dict[str, Any]:
    where = f"{path}: entries[{index}]"
    if not isinstance(entry, dict):
        raise MlfsicError(f"{where}: expected a mapping")
    for name in REQUIRED:
        if entry.get(name) in (None, ""):
            raise MlfsicError(f"{where}: missing field {name!r}")
    try:
        value = float(entry["map"])
    except (TypeError, ValueError):
        raise MlfsicError(f"{where}: field 'map' must be a number (percent), got {entry['map']!r}") from None
    if not 0.0 <= value <= 100.0:
        raise MlfsicError(f"{where}: field 'map' must be a percentage in [0, 100], got {value}")
    citation = f"{entry['paper']}, {entry['table']}"
    if entry.get("note"):
        citation += f" ({entry['note']})"
    return {"kind": "reported", "dataset": str(entry["dataset"]), "setting": str(entry["setting"]), "group": "",
            "method": f"{entry['method']} (reported)", "map": value / 100.0, "citation": citation}


def load_reported(reference_dir: Path | None = None) -> pd.DataFrame:
    """All entries of ``reference_dir/*.yaml`` (sorted by file name), one row each; map as a fraction."""
    reference_dir = default_reference_dir() if reference_dir is None else Path(reference_dir)
    rows: list[dict[str, Any]] = []
    if reference_dir.is_dir():
        for path in sorted(reference_dir.glob("*.yaml")):
            try:
                content = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as error:
                raise MlfsicError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None
            entries = content.get("entries") if isinstance(content, dict) else None
            if entries is None:
                entries = []
            if not isinstance(entries, list):
                raise MlfsicError(f"{path}: field 'entries' must be a list")
            rows.extend(_entry_row(path, i, entry) for i, entry in enumerate(entries))
    return pd.DataFrame(rows, columns=["kind", "dataset", "setting", "group", "method", "map", "citation"])
