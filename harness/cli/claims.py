"""``mlfsic claims [ablation=DIR] [ranking=DIR] [out=DIR]``: test the paper's claims (the command only; the claims
and their test: ``mlfsic.studies.lcm_tomm2024.claims``, ``studies/lcm_tomm2024/claims.py``)."""

from __future__ import annotations

from mlfsic.harness.cli.options import ClaimsOptions, parse_key_values
from mlfsic.studies.lcm_tomm2024.claims import run_claims


def claims_command(options: list[str]) -> int:
    """``mlfsic claims [ablation=DIR] [ranking=DIR] [out=DIR]`` (studies.lcm_tomm2024.claims; the options:
    ``options.ClaimsOptions``)."""
    given, _ = parse_key_values("claims", ClaimsOptions, options)
    text, paths = run_claims(ablation=given.ablation, ranking=given.ranking, out=given.out)
    print(text)
    for path in paths.values():
        print(path)
    return 0
