"""Third-party methods register through the ``mlfsic.methods`` entry-point group (docs/architecture.md §2, 4.3).

The example package ``tests/plugin_example`` declares ``example-cosine``; ``make test`` installs it into
``.venv/test-plugins``, which only the tests have on their PYTHONPATH (so ``make run`` never ranks it).
"""

from __future__ import annotations

from importlib import metadata

import numpy as np

from mlfsic.methods.registry import ENTRY_POINT_GROUP, available_methods, create_method
from synthetic_data import make_base_data, make_episode


def test_example_plugin_is_registered_with_entry_point_origin():
    declared = {entry_point.name for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert "example-cosine" in declared, "run through `make test` (puts tests/plugin_example on PYTHONPATH)"
    info = available_methods()["example-cosine"]
    assert info.origin.startswith("entry point")
    assert "mlfsic-example-plugin" in info.origin
    assert info.cls.__module__ == "mlfsic_example_plugin.cosine"
    assert info.cls.supports("5shot") and not info.cls.supports("0shot")


def test_builtins_keep_builtin_origin():
    methods = available_methods()
    for name in ("random", "wordvec-zeroshot", "protonet", "laso"):
        assert methods[name].origin == "built-in"


def test_example_plugin_runs_through_the_registry():
    method = create_method("example-cosine", {}, seed=0)
    method.fit(make_base_data(n=50), None)
    episode, _ = make_episode(1, seed=0)
    scores = method.predict(episode)
    assert scores.shape == (episode.n_query, episode.n_labels) and np.all(np.isfinite(scores))
