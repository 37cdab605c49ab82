"""Deliberately broken methods for the runner's fault tests (imported through ``method_modules``)."""

from __future__ import annotations

import numpy as np

from mlfsic.methods.api import Episode, Method, SplitData, register


@register("test-raises")
class RaisesInPredict(Method):
    def fit(self, base: SplitData, val: SplitData | None) -> None:
        return None

    def predict(self, episode: Episode) -> np.ndarray:
        raise RuntimeError("deliberate failure")


@register("test-nan")
class ReturnsNaN(Method):
    def fit(self, base: SplitData, val: SplitData | None) -> None:
        return None

    def predict(self, episode: Episode) -> np.ndarray:
        scores = np.zeros((episode.n_query, episode.n_labels))
        if episode.index == 3:
            scores[0, 0] = np.nan
        return scores


@register("test-wrong-shape")
class WrongShape(Method):
    def fit(self, base: SplitData, val: SplitData | None) -> None:
        return None

    def predict(self, episode: Episode) -> np.ndarray:
        return np.zeros((episode.n_query, episode.n_labels + 1))


@register("test-fit-raises")
class RaisesInFit(Method):
    def fit(self, base: SplitData, val: SplitData | None) -> None:
        raise ValueError("cannot fit")

    def predict(self, episode: Episode) -> np.ndarray:
        return np.zeros((episode.n_query, episode.n_labels))


@register("test-hangs")
class HangsInPredict(Method):
    """Sleeps forever on episode 12 (the second chunk of 10): only ``task_timeout_s`` ends it."""

    def fit(self, base: SplitData, val: SplitData | None) -> None:
        return None

    def predict(self, episode: Episode) -> np.ndarray:
        if episode.index == 12:
            import time

            while True:
                time.sleep(60)
        return np.zeros((episode.n_query, episode.n_labels))


@register("test-fit-hangs")
class HangsInFit(Method):
    def fit(self, base: SplitData, val: SplitData | None) -> None:
        import time

        while True:
            time.sleep(60)

    def predict(self, episode: Episode) -> np.ndarray:
        return np.zeros((episode.n_query, episode.n_labels))


@register("test-eats-memory")
class EatsMemory(Method):
    """Allocates 200 MB at a time (touched, so resident) up to ``limit_gb`` in predict: for the OOM fault test,
    run under a Ray memory monitor threshold just above what the machine already uses."""

    def __init__(self, limit_gb: float = 10.0, seed: int = 0) -> None:
        super().__init__(seed)
        self.limit_gb = limit_gb

    def fit(self, base: SplitData, val: SplitData | None) -> None:
        return None

    def predict(self, episode: Episode) -> np.ndarray:
        import time

        held = []
        while len(held) * 0.2 < self.limit_gb:
            held.append(np.ones(25_000_000))  # 200 MB of float64
            time.sleep(0.05)
        return np.zeros((episode.n_query, episode.n_labels))
