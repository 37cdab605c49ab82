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
