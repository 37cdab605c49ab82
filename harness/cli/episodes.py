"""``mlfsic episodes [HYDRA OVERRIDES...]``: materialise a sweep's episode sets; print id, setting, seed, path."""

from __future__ import annotations

from mlfsic.harness.protocol.data import split_pool
from mlfsic.harness.protocol.episodes import materialise_episode_sets
from mlfsic.harness.sweep.prepare import load_dataset_and_split
from mlfsic.harness.sweep.load import load_sweep


def episodes_command(overrides: list[str]) -> int:
    sweep = load_sweep(overrides)
    dataset, split = load_dataset_and_split(sweep.dataset.as_dict())
    pool = split_pool(dataset, sweep.eval_split, split[sweep.eval_split])
    for ref in materialise_episode_sets(pool, sweep.episode_plan, sweep.results_dir):
        print(f"{ref.episode_set_id}  {ref.setting}  seed{ref.seed}  {ref.path}")
    return 0
