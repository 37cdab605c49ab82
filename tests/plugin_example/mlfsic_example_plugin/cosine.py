"""Cosine-similarity prototypes: the smallest useful few-shot method, as a plug-in example.

Prototype of a label = mean of the L2-normalised global features of the support images that carry it;
score = cosine similarity between a query and each prototype. No training (``fit`` does nothing).
"""

from __future__ import annotations

import numpy as np

from mlfsic.methods.api import Episode, Method, SplitData


class CosinePrototypes(Method):
    zero_shot = False
    few_shot = True

    def fit(self, base: SplitData, val: SplitData | None) -> None:
        return None

    def predict(self, episode: Episode) -> np.ndarray:
        support = _normalise(episode.support_features)
        weights = episode.support_targets / np.maximum(episode.support_targets.sum(axis=0, keepdims=True), 1.0)
        prototypes = _normalise(weights.T @ support)  # (N, D)
        return _normalise(episode.query_features) @ prototypes.T  # (n_q, N)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
