"""``mlfsic claims [ablation=DIR] [ranking=DIR] [out=DIR]``: test the paper's claims (``report/claims.py``)."""

from __future__ import annotations

from pathlib import Path

from mlfsic.harness.cli.options import key_values
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.report.claims import run_claims


def claims_command(options: list[str]) -> int:
    """``mlfsic claims [ablation=DIR] [ranking=DIR] [out=DIR]`` (harness.report.claims)."""
    values = key_values(options)
    unknown = sorted(set(values) - {"ablation", "ranking", "out"})
    if unknown:
        raise MlfsicError(f"unknown claims option {unknown[0]!r} (known: ablation, ranking, out)")
    given = {key: Path(value) for key, value in values.items()}
    text, paths = run_claims(ablation=given.get("ablation"), ranking=given.get("ranking"), out=given.get("out"))
    print(text)
    for path in paths.values():
        print(path)
    return 0
