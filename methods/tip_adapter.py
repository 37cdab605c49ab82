"""Tip-Adapter: a training-free cache of the support features on top of a zero-shot classifier, multi-label.

Device: computes on the CPU whatever its task was given (``uses_device`` False; issue 37 moved lcm, laso and
protonet to the task's device, not this method).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.metrics import episode_map
from mlfsic.methods.api import Deviation, Episode, Method, SplitData, register
from mlfsic.methods.baselines import WordVectorZeroShot
from mlfsic.methods.torch_utils import (
    check_episode,
    check_fit_splits,
    fit_standardiser,
)
from mlfsic.methods.val_selection import choose_per_shot, nearest_shot

HEADS = ("auto", "learned", "label_embeddings")
FEATURE_MODES = ("l2", "centre_l2", "standardise_l2")
CACHE_VALUES = ("mean", "sum")


@register("tip-adapter")
class TipAdapter(Method):
    """Tip-Adapter (Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
    Classification", ECCV 2022; arXiv 2111.03930), made multi-label. Kshot only; nothing is trained per
    episode.

    Per episode (n_s support images, N labels, n_q queries), the cache's keys are the support images'
    normalised global features and its values ``V`` (n_s, N) come from their multi-hot targets ``L``; a
    query ``q`` (normalised the same way) is scored per label::

        A     = exp(-beta * (1 - q @ keys^T))                 (n_q, n_s) affinities, in (0, 1]
        cache = A @ V                                          (n_q, N)
        score = z(q) / sigma + alpha * cache                   (n_q, N), higher = more likely

    Multi-label cache values (``cache_values``): the paper's values are one-hot, so each class has exactly
    K entries of weight 1. Here a support image carries 1-4 labels and a label may have more than K support
    images; ``mean`` (default) divides each label's column of ``L`` by its number of support images, so
    a label's cache term is the mean affinity of its support images and every label has the same total
    weight, as in the paper (on single-label K-shot data it is the paper's term divided by K, which the
    val-chosen alpha absorbs); ``sum`` is ``A @ L`` as it stands. Per label the two rank the queries alike
    up to the balance with ``z``; across labels only ``mean``'s scores are comparable (F1@3 below). Scores
    stay per label, without a softmax or sigmoid (AP is a per-label ranking).

    ``z`` is the zero-shot classifier's cosine of the query with each label (``zero_shot_head``, below) and
    ``sigma`` its spread on the base split (the std over base images of a label's cosine, averaged over
    base labels). The paper writes ``100 * cos + alpha * cache`` with CLIP's logit scale 100; dividing by
    ``sigma`` instead makes ``alpha`` mean the same thing for zero-shot heads of any scale (a learned map's
    cosines, another model's): ``alpha = 1`` weighs a label's cache term at affinity 1 like one std of its
    zero-shot score. Dividing by a constant changes no per-label ranking of ``z`` alone, so ``alpha = 0``
    ranks exactly as the zero-shot classifier does.

    The zero-shot classifier (``zero_shot_head``; the paper's is CLIP's text tower):

    * ``label_embeddings``: ``z = cos(x, t)`` with the raw global feature ``x`` and the label embedding
      ``t`` as they come. With ``embeddings.encoder=clip`` on an open_clip backbone (``+backbone=tiny-teacher``)
      the label embeddings are the text tower's embeddings of "There is a {label} in the scene" and the
      global features the projected image embeddings, so this is the paper's zero-shot term and ``z`` is
      ``clip-zeroshot``'s score. It needs the two of the same size.
    * ``learned`` (deviation, for backbones without a text tower, e.g. the default SmallCNN): the
      ``wordvec-zeroshot`` model (DeViSE, Frome et al., NeurIPS 2013; ``methods/baselines.py``), fitted on
      the base split with the same seed and settings (``head_epochs`` its ``epochs``), so ``z`` is exactly
      ``wordvec-zeroshot``'s cosine: a linear map of the standardised image feature into the word-embedding
      space, scored against the label's embedding.
    * ``auto`` (default): ``learned``, and also ``label_embeddings`` when label embeddings and global
      features have the same size; with a val split the head is chosen on val with ``alpha`` and ``beta``,
      without one it is ``learned``. The method does not take the sweep's open_clip model (``needs_clip`` is
      False), so it runs on every backbone and joins ``method=all`` everywhere.

    Cache features (``features``): ``standardise_l2`` (default) standardises with the base split's
    per-dimension mean and std, then L2-normalises; ``centre_l2`` subtracts the base mean only; ``l2``
    L2-normalises the raw features, as the paper does with CLIP's (whose cache keys are also the mean of
    10 augmented views of each image; the feature store has one un-augmented feature per image).

    Model selection on val (``fit(base, val)``, as ``linear-probe``): the harness does not tell ``fit`` which
    K it will evaluate, so for each K of ``val_shots`` (1 and 5) ``n_val_episodes`` episodes are drawn once
    from the seed on the val split by the harness's default ``release`` sampler (all val labels with at least
    K + ``n_query`` images, ``n_query`` queries per label), every (head, alpha, beta) of the grid
    (``alpha_grid`` x ``beta_grid``) is scored by its mean val mAP and the best kept (exact ties: the
    earlier in grid order); ``predict`` uses the setting of the nearest K (ties: the smaller). ``fit_report``
    records the choice, its val mAP, the zero-shot-only and cache-only val mAP and the whole grid.
    Without a val split (``eval_split=val``), or when val has fewer than 2 usable labels, the paper's
    defaults ``alpha = 1``, ``beta = 5.5`` (constructor ``alpha``, ``beta``; here ``alpha`` is relative to
    ``sigma``, see above) are used for every K, and ``fit_report`` says so.

    Measured on the coco-moji VAL split, SmallCNN (``mlfsic run method=[...] eval_split=val fit_val=true
    n_episodes=100 seeds=[0]``: fit selects on its own 40 val episodes per K, the 100 scored episodes are the
    harness's), mAP 1shot / 5shot (F1@3): tip-adapter 56.2 / 65.1 (48.2 / 58.1); ``cache_values=sum``
    56.3 / 65.0 (36.3 / 33.1); ``features=l2`` 54.1 / 62.2; the paper's fixed alpha = 1, beta = 5.5 43.6 /
    43.1; a grid of alpha <= 10, beta >= 1 55.7 / 61.5; protonet 54.7 / 62.9, linear-probe 55.8 / 70.6,
    wordvec-zeroshot (0shot) 41.0, random 34.5. The val choice there is alpha 100 / 1000, beta 0.1: the
    learned zero-shot term (val mAP 40.8 / 41.0 alone) adds +0.6 / +0.07 to the cache alone in fit's own val
    episodes, so on this backbone tip-adapter is mostly its cache, a soft nearest-prototype classifier.
    The grid reaches alpha = 1000 and beta = 0.1 because val's optimum lies beyond the paper's ranges there.
    On the tiny teacher with the text tower's label embeddings (``+backbone=tiny-teacher embeddings.encoder=clip``,
    concept-seen, same protocol), ``auto`` chooses the ``label_embeddings`` head for both K (zero-shot val mAP
    41.9 / 43.5 against the learned head's 36.5 / 36.8): tip-adapter 47.2 / 50.3, with the learned head 46.5 / 50.3,
    protonet 46.3 / 49.3, clip-zeroshot (0shot) 42.5.

    Settings: 0shot is not supported (``zero_shot = False``): with an empty cache Tip-Adapter is its
    zero-shot classifier, i.e. ``wordvec-zeroshot`` or ``clip-zeroshot``, which are registered already.
    Tip-Adapter-F (cache keys fine-tuned on the few-shot training set) is left out: the paper fine-tunes
    with random crops and flips of the training images, which the feature store (one frozen feature per
    image) cannot give; without them the keys would be trained on the very support features they are
    (each already at affinity 1 to its own key), and it would need a per-episode optimiser with a
    val-chosen learning rate and epochs, batched over a chunk (as ``lcm_adaptation``).

    Batching (``predict_batch``): the learned head's map of the chunk's queries is one product; the rest is
    per episode, so an episode's scores do not depend on the other episodes. Computed in float64.
    """

    zero_shot = False
    few_shot = True
    needs_local_features = False
    # Effects: coco-moji val, SmallCNN, fit_val=true, 100 episodes, seed 0, mAP 1-shot / 5-shot.
    deviations = (
        Deviation(what="multi-label cache values: each label's column of the multi-hot support targets divided by its "
                       "number of support images (the paper's values are one-hot, K per class)",
                  why="a support image carries 1-4 labels, so summed values favour labels seen on many support images",
                  effect="mean 56.2 / 65.1 vs the literal sum A @ L 56.3 / 65.0 mAP; F1@3 48.2 / 58.1 vs 36.3 / 33.1",
                  split="val"),
        Deviation(what="on a backbone without a text tower the zero-shot term is the word-vector map of "
                       "wordvec-zeroshot fitted on base (the paper's is CLIP's text tower); on an open_clip backbone "
                       "with embeddings.encoder=clip the CLIP text embeddings are a candidate head chosen on val",
                  why="the default benchmark's SmallCNN has no text tower",
                  effect="on the SmallCNN the learned head adds +0.6 / +0.07 over the cache alone; on the tiny teacher "
                         "val chose the CLIP-text head (47.2 / 50.3 vs 46.5 / 50.3 with the learned head)", split="val"),
        Deviation(what="the zero-shot cosine is divided by its spread on the base split instead of multiplied by "
                       "CLIP's logit scale 100", why="so that alpha means the same for heads of any scale",
                  effect="changes no ranking at alpha=0; alpha is chosen on val either way"),
        Deviation(what="alpha (0.1-1000) and beta (0.1-10) chosen per K on 40 val episodes (the paper searches them "
                       "on its val set too, over smaller ranges); keys standardised with base statistics before L2",
                  why="val's optimum on the SmallCNN lies outside the paper's range (alpha 100-1000, beta 0.1)",
                  effect="val-chosen 56.2 / 65.1 vs the paper's fixed alpha=1, beta=5.5: 43.6 / 43.1; raw L2 keys "
                         "(the paper's) 54.1 / 62.2", split="val"),
        Deviation(what="Tip-Adapter-F (fine-tuned keys) left out", why="the paper fine-tunes the keys on augmented "
                  "views; the feature store holds one frozen feature per image", effect="not applicable"),
    )

    def __init__(
        self,
        seed: int = 0,
        alpha_grid: list[float] = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0],  # noqa: B006 - copied
        beta_grid: list[float] = [0.1, 0.3, 1.0, 3.0, 5.5, 10.0],  # noqa: B006 - copied, never mutated
        alpha: float = 1.0,
        beta: float = 5.5,
        zero_shot_head: str = "auto",
        features: str = "standardise_l2",
        cache_values: str = "mean",
        head_epochs: int = 30,
        n_val_episodes: int = 40,
        val_shots: list[int] = [1, 5],  # noqa: B006 - copied, never mutated
        n_query: int = 4,
    ) -> None:
        super().__init__(seed)
        if zero_shot_head not in HEADS:
            raise MlfsicError(f"tip-adapter: zero_shot_head must be one of {', '.join(HEADS)}, got {zero_shot_head!r}")
        if features not in FEATURE_MODES:
            raise MlfsicError(f"tip-adapter: features must be one of {', '.join(FEATURE_MODES)}, got {features!r}")
        if cache_values not in CACHE_VALUES:
            raise MlfsicError(f"tip-adapter: cache_values must be one of {', '.join(CACHE_VALUES)}, "
                              f"got {cache_values!r}")
        alphas, betas = [float(a) for a in alpha_grid], [float(b) for b in beta_grid]
        if any(not a >= 0.0 for a in [*alphas, float(alpha)]) or any(not b > 0.0 for b in [*betas, float(beta)]):
            raise MlfsicError(f"tip-adapter: alpha values must be >= 0 and beta values > 0, got alpha={alpha}, "
                              f"beta={beta}, alpha_grid={alpha_grid}, beta_grid={beta_grid}")
        if head_epochs < 1 or n_query < 1 or n_val_episodes < 0 or not val_shots or any(int(k) < 1 for k in val_shots):
            raise MlfsicError("tip-adapter: head_epochs and n_query must be >= 1, n_val_episodes >= 0, val_shots a "
                              "non-empty list of K >= 1")
        self.alpha_grid, self.beta_grid = alphas, betas
        self.alpha, self.beta = float(alpha), float(beta)
        self.zero_shot_head = zero_shot_head
        self.features = features
        self.cache_values = cache_values
        self.head_epochs = int(head_epochs)
        self.n_val_episodes = int(n_val_episodes)
        self.val_shots = sorted({int(k) for k in val_shots})
        self.n_query = int(n_query)

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, base: SplitData, val: SplitData | None) -> None:
        check_fit_splits(base, val, self.name)
        self.feature_dim = int(base.features.shape[1])
        self.feature_mean, self.feature_std = fit_standardiser(base.features)
        same_size = base.label_embeddings.shape[1] == self.feature_dim
        if self.zero_shot_head == "label_embeddings" and not same_size:
            raise MlfsicError(f"{self.name}.fit: zero_shot_head=label_embeddings needs label embeddings of the global "
                              f"features' size ({self.feature_dim}), got {base.label_embeddings.shape[1]} "
                              "(embeddings.encoder=clip on an open_clip backbone gives them)")
        heads = {"auto": ["learned"] + (["label_embeddings"] if same_size else []),
                 "learned": ["learned"], "label_embeddings": ["label_embeddings"]}[self.zero_shot_head]
        if "learned" in heads:  # wordvec-zeroshot's model, fitted exactly as that method fits it
            self.learned_head = WordVectorZeroShot(seed=self.seed, epochs=self.head_epochs)
            self.learned_head.fit(base, None)
        self.spread = {head: self._spread(head, base) for head in heads}
        fallback_head = "learned" if self.zero_shot_head == "auto" else self.zero_shot_head
        default = {"head": fallback_head, "alpha": self.alpha, "beta": self.beta}
        self.chosen, report, notes = choose_per_shot(val, self.val_shots, self.n_val_episodes, self.n_query, self.seed,
                                                     default, lambda episodes: self._val_grid(heads, episodes))
        self.fit_report = {"features": self.features, "cache_values": self.cache_values,
                           "zero_shot_head": self.zero_shot_head,
                           "zero_shot_spread": {h: round(s, 6) for h, s in self.spread.items()}, **report}
        if notes:
            self.fit_report["note"] = (f"paper defaults used (alpha={self.alpha}, beta={self.beta}, head "
                                       f"{fallback_head}): " + "; ".join(notes))

    def _spread(self, head: str, base: SplitData) -> float:
        """``sigma``: the std over base images of a base label's zero-shot cosine, averaged over base labels."""
        cosine = self._zero_shot_cosine(head, self._head_input(head, base.features), base.label_embeddings)
        return max(float(cosine.std(dim=0, unbiased=False).mean()), 1e-12)

    def _val_grid(self, heads: list[str], episodes: list[tuple[Episode, np.ndarray]]
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Mean val mAP of every (head, alpha, beta), and the zero-shot-only / cache-only val mAP."""
        zero_shot = {head: [self._zero_shot(head, self._head_input(head, e.query_features), e.label_embeddings)
                            for e, _ in episodes] for head in heads}
        cosines = [self._cache_cosine(e) for e, _ in episodes]
        values = [self._cache_values(e) for e, _ in episodes]
        targets = [t for _, t in episodes]

        def mean_map(scores: list[torch.Tensor]) -> float:
            return round(float(np.mean([episode_map(s.numpy(), t) for s, t in zip(scores, targets)])), 6)

        caches = {beta: [cache_logits(c, v, beta) for c, v in zip(cosines, values)] for beta in self.beta_grid}
        rows = [{"head": head, "alpha": alpha, "beta": beta,
                 "val_map": mean_map([z + alpha * c for z, c in zip(zero_shot[head], caches[beta])])}
                for head in heads for alpha in self.alpha_grid for beta in self.beta_grid]
        extra = {"zero_shot_val_map": {head: mean_map(zero_shot[head]) for head in heads},
                 "cache_only_val_map": {str(beta): mean_map(caches[beta]) for beta in self.beta_grid}}
        return rows, extra

    # --------------------------------------------------------------------------------------- predict
    def setting_for(self, k_shot: int) -> dict[str, Any]:
        """The chosen ``{"head", "alpha", "beta"}`` of the stored K nearest to ``k_shot`` (ties: the smaller K)."""
        return nearest_shot(self.chosen, k_shot)

    def predict(self, episode: Episode) -> np.ndarray:
        return self.predict_batch([episode])[0]

    def predict_batch(self, episodes: list[Episode]) -> list[np.ndarray]:
        """Scores of a chunk of episodes (see the class docstring); each episode's depend on it alone."""
        for episode in episodes:
            check_episode(episode, self.name, self.feature_dim, self.zero_shot, self.few_shot)
            if episode.label_embeddings.shape[1] != self._embedding_dim():
                raise MlfsicError(f"{self.name}: episode {episode.index} label_embeddings have size "
                                  f"{episode.label_embeddings.shape[1]}, the method was fitted with "
                                  f"{self._embedding_dim()}")
        settings = [self.setting_for(episode.k_shot) for episode in episodes]
        inputs: dict[str, list[torch.Tensor]] = {}
        for head in sorted({s["head"] for s in settings}):  # the head's input of all the chunk's queries at once
            members = [e for e, s in zip(episodes, settings) if s["head"] == head]
            sizes = [e.n_query for e in members]
            joined = self._head_input(head, np.concatenate([e.query_features for e in members]))
            inputs[head] = list(torch.split(joined, sizes))
        scores = []
        for episode, setting in zip(episodes, settings):
            z = self._zero_shot(setting["head"], inputs[setting["head"]].pop(0), episode.label_embeddings)
            cache = cache_logits(self._cache_cosine(episode), self._cache_values(episode), float(setting["beta"]))
            scores.append((z + float(setting["alpha"]) * cache).numpy())
        self.predict_report = {"episodes": len(episodes)}
        return scores

    # ------------------------------------------------------------------------------------- the terms
    def _embedding_dim(self) -> int:
        if hasattr(self, "learned_head"):
            return int(self.learned_head.visual_to_word.out_features)
        return self.feature_dim

    def _head_input(self, head: str, features: np.ndarray) -> torch.Tensor:
        """(n, D) float32 features -> what the head compares with the labels, (n, E) float64, unit rows: the
        learned map of the standardised features (wordvec-zeroshot's), or the raw features."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32)).double()
        if head == "learned":
            learned = self.learned_head
            x = (x - learned.feature_mean.double()) / learned.feature_std.double()
            x = x @ learned.visual_to_word.weight.detach().double().T + learned.visual_to_word.bias.detach().double()
        return F.normalize(x, dim=-1)

    def _zero_shot_cosine(self, head: str, head_input: torch.Tensor, embeddings: np.ndarray) -> torch.Tensor:
        words = F.normalize(torch.as_tensor(np.asarray(embeddings, dtype=np.float32)).double(), dim=-1)
        return head_input @ words.T

    def _zero_shot(self, head: str, head_input: torch.Tensor, embeddings: np.ndarray) -> torch.Tensor:
        """The zero-shot term z / sigma, (n, N) float64."""
        return self._zero_shot_cosine(head, head_input, embeddings) / self.spread[head]

    def _normalise(self, features: np.ndarray) -> torch.Tensor:
        """(n, D) float32 array -> (n, D) float64 tensor of unit rows (``features`` mode): cache keys and queries."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32)).double()
        if self.features == "standardise_l2":
            x = (x - self.feature_mean.double()) / self.feature_std.double()
        elif self.features == "centre_l2":
            x = x - self.feature_mean.double()
        return F.normalize(x, dim=-1)

    def _cache_values(self, episode: Episode) -> torch.Tensor:
        """The cache's values (n_s, N) float64: the support images' multi-hot targets (``sum``), or each label's
        column divided by its number of support images (``mean``)."""
        values = torch.as_tensor(np.asarray(episode.support_targets) > 0.5, dtype=torch.float64)
        if self.cache_values == "mean":
            values = values / values.sum(dim=0, keepdim=True).clamp_min(1.0)
        return values

    def _cache_cosine(self, episode: Episode) -> torch.Tensor:
        """Cosine of each query with each cache key (support image), (n_q, n_s) float64."""
        return self._normalise(episode.query_features) @ self._normalise(episode.support_features).T


def cache_logits(cosine: torch.Tensor, values: torch.Tensor, beta: float) -> torch.Tensor:
    """Tip-Adapter's cache term ``exp(-beta (1 - cos)) @ L``: cosines (n_q, n_s), values L (n_s, N) -> (n_q, N)."""
    return torch.exp(-beta * (1.0 - cosine)) @ values
