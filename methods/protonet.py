"""Multi-label prototypical network (docs/architecture.md §8), trained episodically on the base split."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mlfsic.harness.errors import MlfsicError
from mlfsic.methods.api import Deviation, Episode, Method, SplitData, register
from mlfsic.methods.torch_utils import (
    check_episode,
    mlp,
    numpy_rng,
    standardise,
    standardised_base,
    torch_generator,
)


@register("protonet")
class MultiLabelProtoNet(Method):
    """Prototypical networks (Snell et al., "Prototypical Networks for Few-shot Learning", NeurIPS 2017) in
    the multi-label form used by the ML-FSIC papers (e.g. Yan et al., AAAI 2022): one prototype per label,
    one sigmoid per (query, label). Kshot only.

    Shapes (n_s support, n_q query images, N labels, D feature size, H embedding size)::

        f = MLP(D -> hidden_dim -> embed_dim) on standardised global features
        prototypes  P = (S^T f(x_s)) / S.sum(0)          S: (n_s, N) support multi-hot   -> (N, H)
        distance    d = ||f(x_q) - P_j||^2 / H                                          -> (n_q, N)
        score       sigmoid(-exp(log_scale) * d + bias)                                  -> (n_q, N)

    An image counts for every label it carries, so a prototype averages all support images with the label.
    Training samples ``n_episodes`` episodes from the base split as the default evaluation protocol does
    (``release``): ``n_way`` base labels, K new support images per label with K uniform in
    ``1..max_train_shot``, ``n_query`` further images per label disjoint from the support set, targets
    restricted to the episode's labels; binary cross-entropy on the queries, one Adam step per episode.
    ``log_scale`` and ``bias`` are learnt with the head.

    On a base split where fewer than 2 labels have ``max_train_shot + n_query`` images (a small dataset), K
    is drawn from ``1..train_shot`` with the largest ``train_shot`` at least 2 labels allow, and
    ``fit_report`` says so.

    Simplifications: the backbone is frozen (global features only); the distance is divided by H so one
    initial scale suits every embedding size; K varies across training episodes instead of matching
    the test shot, so one checkpoint serves 1shot and 5shot.

    Device (``uses_device``): the head, the standardised features and the episodes' tensors live on
    ``self.device`` (the task's, ``Method.use_device``); the episode draws and the head's initial weights come
    from CPU generators, so they are the same on every device; scores come back as CPU numpy.
    """

    zero_shot = False
    few_shot = True
    uses_device = True
    deviations = (
        Deviation(what="the backbone is frozen and only an MLP head (D -> 256 -> 128) on the global features is "
                       "trained; Snell et al. train the whole convolutional embedding network",
                  why="features are computed once per image and shared by all methods (DESIGN section 7)",
                  effect="not measured: it needs per-method backbone training, which the feature store does not do"),
        Deviation(what="multi-label form: one sigmoid per (query, label) and binary cross-entropy, a prototype "
                       "averaging every support image that carries the label; Snell et al. take a softmax over the "
                       "classes and cross-entropy, one class per image",
                  why="episodes are multi-label; this is the form the ML-FSIC papers use (e.g. Yan et al., AAAI 2022)",
                  effect="not measured: there is no single-label counterpart on multi-label episodes"),
        Deviation(what="score sigmoid(-exp(log_scale) * d + bias) with the squared distance divided by the embedding "
                       "size H, log_scale and bias learnt; Snell et al. use the plain negative squared distance",
                  why="dividing by H lets one initial scale suit every embedding size (class docstring); why scale "
                      "and bias are learnt is not stated in the code history",
                  effect="not measured"),
        Deviation(what="training shot K drawn uniformly from 1..5 per episode (10-way, 4 queries per label); Snell et "
                       "al. train with the test shot",
                  why="one checkpoint serves 1-shot and 5-shot",
                  effect="not measured"),
    )

    def __init__(
        self,
        seed: int = 0,
        hidden_dim: int = 256,
        embed_dim: int = 128,
        n_episodes: int = 3000,
        n_way: int = 10,
        max_train_shot: int = 5,
        n_query: int = 4,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        progress: bool = False,
    ) -> None:
        super().__init__(seed)
        self.hidden_dim = hidden_dim
        self.embed_dim = embed_dim
        self.n_episodes = n_episodes
        self.n_way = n_way
        self.max_train_shot = max_train_shot
        self.n_query = n_query
        self.lr = lr
        self.weight_decay = weight_decay
        self.progress = progress

    def fit(self, base: SplitData, val: SplitData | None) -> None:
        if self.n_way < 2 or self.max_train_shot < 1 or self.n_query < 1:
            raise MlfsicError(f"{self.name}: n_way must be >= 2, max_train_shot and n_query >= 1")
        rng = numpy_rng(self.seed, 1)
        generator = torch_generator(self.seed, 0)
        features = standardised_base(self, base, val).to(self.device)
        targets = np.asarray(base.targets) > 0.5
        members = [np.flatnonzero(targets[:, j]) for j in range(targets.shape[1])]
        sizes = np.array([m.size for m in members])
        train_shot = self.max_train_shot  # lowered only for a base split too small for it (a small dataset)
        while train_shot > 1 and (sizes >= train_shot + self.n_query).sum() < 2:
            train_shot -= 1
        eligible = np.flatnonzero(sizes >= train_shot + self.n_query)
        if eligible.size < 2:
            raise MlfsicError(
                f"{self.name}.fit: fewer than 2 base labels have {1 + self.n_query} images "
                f"(1 support + n_query); cannot sample training episodes"
            )
        if train_shot < self.max_train_shot:
            self.fit_report = {"train_shot": train_shot, "note": f"max_train_shot={self.max_train_shot} lowered: "
                               f"fewer than 2 base labels have {self.max_train_shot + self.n_query} images"}
        n_way = min(self.n_way, int(eligible.size))

        self.head = mlp([features.shape[1], self.hidden_dim, self.embed_dim], generator).to(self.device)
        self.log_scale = nn.Parameter(torch.zeros((), device=self.device))
        self.bias = nn.Parameter(torch.zeros((), device=self.device))
        parameters = [*self.head.parameters(), self.log_scale, self.bias]
        optimiser = torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        for _ in tqdm(range(self.n_episodes), desc=f"{self.name} fit", disable=not self.progress):
            labels = rng.choice(eligible, size=n_way, replace=False)
            k_shot = int(rng.integers(1, train_shot + 1))
            support, query = sample_episode(members, labels, k_shot, self.n_query, targets.shape[0], rng)
            support_targets = torch.as_tensor(targets[np.ix_(support, labels)], dtype=torch.float32, device=self.device)
            query_targets = torch.as_tensor(targets[np.ix_(query, labels)], dtype=torch.float32, device=self.device)
            logits = self._logits(features[support], support_targets, features[query])
            loss = F.binary_cross_entropy_with_logits(logits, query_targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        self.head.eval()

    def _on_device(self) -> None:
        """Move the fitted head, scale, bias and standardisation to ``self.device`` (a checkpoint loads on the CPU)."""
        self.head.to(self.device)
        self.log_scale.data = self.log_scale.data.to(self.device)
        self.bias.data = self.bias.data.to(self.device)
        self.feature_mean, self.feature_std = self.feature_mean.to(self.device), self.feature_std.to(self.device)

    def _logits(self, support: torch.Tensor, support_targets: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(n_s, D), (n_s, N), (n_q, D) standardised -> (n_q, N) logits."""
        embedded_support = self.head(support)  # (n_s, H)
        weights = support_targets / support_targets.sum(dim=0, keepdim=True).clamp_min(1.0)
        prototypes = weights.T @ embedded_support  # (N, H)
        distance = torch.cdist(self.head(query), prototypes).square() / prototypes.shape[1]  # (n_q, N)
        return -self.log_scale.exp() * distance + self.bias

    def predict(self, episode: Episode) -> np.ndarray:
        check_episode(episode, self.name, int(self.feature_mean.shape[0]), self.zero_shot, self.few_shot)
        self._on_device()
        with torch.no_grad():
            logits = self._logits(
                standardise(episode.support_features, self.feature_mean, self.feature_std, self.device),
                torch.as_tensor(episode.support_targets, dtype=torch.float32, device=self.device),
                standardise(episode.query_features, self.feature_mean, self.feature_std, self.device),
            )
        return torch.sigmoid(logits.double()).cpu().numpy()


def sample_episode(
    members: list[np.ndarray], labels: np.ndarray, k_shot: int, n_query: int, n_images: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Support and query image indices of one training episode, as the ``release`` rule draws them.

    For each label in turn, ``k_shot`` not-yet-drawn images carrying it go to the support set; then, for
    each label, ``n_query`` further not-yet-drawn images carrying it go to the query set (so the two sets
    are disjoint and no image is drawn twice). ``members[j]`` lists the images carrying label ``j``.
    """
    drawn = np.zeros(n_images, dtype=bool)

    def draw(count: int) -> np.ndarray:
        picked: list[np.ndarray] = []
        for label in labels:
            candidates = members[label][~drawn[members[label]]]
            chosen = rng.choice(candidates, size=min(count, candidates.size), replace=False)
            drawn[chosen] = True
            picked.append(chosen)
        return np.concatenate(picked)

    support = draw(k_shot)
    query = draw(n_query)
    return support, query
