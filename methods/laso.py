"""LaSO: label-set operation networks, with union-synthesised support features for few-shot episodes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mlfsic.methods.api import Episode, Method, SplitData, register
from mlfsic.methods.torch_utils import (
    check_episode,
    linear,
    minibatches,
    mlp,
    numpy_rng,
    standardise,
    standardised_base,
    torch_generator,
)


@register("laso")
class LaSO(Method):
    """LaSO (Alfassy et al., "LaSO: Label-Set Operations networks for multi-label few-shot learning",
    CVPR 2019). Kshot only.

    Three set-operation networks take a pair of (standardised) global features and return a feature::

        M_int, M_uni, M_sub: concat(F_x, F_y) (B, 2D) -> MLP(2D -> hidden -> hidden -> D) -> (B, D)

    A base classifier ``C`` (linear, D -> N_base) is first trained on the real base features, then the
    networks and ``C`` are trained jointly on random pairs (x, y) of base images with the paper's loss::

        BCE(C(F_x), L_x) + BCE(C(F_y), L_y)                                          classification
      + BCE(C(M_int), L_x & L_y) + BCE(C(M_uni), L_x | L_y) + BCE(C(M_sub), L_x & ~L_y)  set operations
      + reconstruction_weight * ( ||F_x - M_uni(M_sub(F_x,F_y), M_int(F_x,F_y))||^2
                                + ||F_y - M_uni(M_sub(F_y,F_x), M_int(F_x,F_y))||^2 )   reconstruction
      + symmetry_weight * ( ||M_int(F_x,F_y) - M_int(F_y,F_x)||^2
                          + ||M_uni(F_x,F_y) - M_uni(F_y,F_x)||^2 )                    symmetry

    (squared errors are means over the feature dimensions).

    Per episode (n_s support images, N labels): a fresh linear classifier (D -> N, zero-initialised) is
    trained by full-batch Adam for ``episode_steps`` steps on the real support features and, with
    ``union_augmentation``, on ``M_uni`` of up to ``max_union_pairs`` support pairs (i < j, drawn with the
    episode's seed when there are more) labelled with the union of the pair's labels; real and synthetic
    examples weigh half each in the BCE. Scores: the classifier's sigmoid on the queries, (n_q, N).

    Simplifications: the backbone is frozen (the paper fine-tunes its ResNet-34 with the LaSO networks);
    the networks have no batch normalisation or dropout (so they are deterministic and batch-independent);
    pairs are uniformly random base pairs; the few-shot classifier is logistic regression on features
    rather than a network head.
    """

    zero_shot = False
    few_shot = True

    def __init__(
        self,
        seed: int = 0,
        hidden_dim: int = 256,
        classifier_epochs: int = 10,
        steps: int = 2000,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        reconstruction_weight: float = 1.0,
        symmetry_weight: float = 1.0,
        union_augmentation: bool = True,
        max_union_pairs: int = 200,
        episode_steps: int = 50,
        episode_lr: float = 0.05,
        episode_weight_decay: float = 1e-3,
        progress: bool = False,
    ) -> None:
        super().__init__(seed)
        self.hidden_dim = hidden_dim
        self.classifier_epochs = classifier_epochs
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.reconstruction_weight = reconstruction_weight
        self.symmetry_weight = symmetry_weight
        self.union_augmentation = union_augmentation
        self.max_union_pairs = max_union_pairs
        self.episode_steps = episode_steps
        self.episode_lr = episode_lr
        self.episode_weight_decay = episode_weight_decay
        self.progress = progress

    # -------------------------------------------------------------------------------------- base training
    def fit(self, base: SplitData, val: SplitData | None) -> None:
        features = standardised_base(self, base, val)
        generator = torch_generator(self.seed, 0)
        targets = torch.as_tensor(base.targets, dtype=torch.float32).gt(0.5).float()
        n, dim = features.shape

        self.classifier = linear(dim, targets.shape[1], generator)
        optimiser = torch.optim.Adam(self.classifier.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in tqdm(range(self.classifier_epochs), desc=f"{self.name} classifier", disable=not self.progress):
            for batch in minibatches(n, self.batch_size, generator):
                loss = F.binary_cross_entropy_with_logits(self.classifier(features[batch]), targets[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()

        self.intersection = mlp([2 * dim, self.hidden_dim, self.hidden_dim, dim], generator, negative_slope=0.2)
        self.union = mlp([2 * dim, self.hidden_dim, self.hidden_dim, dim], generator, negative_slope=0.2)
        self.subtraction = mlp([2 * dim, self.hidden_dim, self.hidden_dim, dim], generator, negative_slope=0.2)
        modules = [self.classifier, self.intersection, self.union, self.subtraction]
        parameters = [p for module in modules for p in module.parameters()]
        optimiser = torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        for _ in tqdm(range(self.steps), desc=f"{self.name} set operations", disable=not self.progress):
            first = torch.randint(n, (self.batch_size,), generator=generator)
            second = torch.randint(n, (self.batch_size,), generator=generator)
            loss = self._pair_loss(features[first], features[second], targets[first], targets[second])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        for module in modules:
            module.eval()

    def _pair_loss(self, fx: torch.Tensor, fy: torch.Tensor, lx: torch.Tensor, ly: torch.Tensor) -> torch.Tensor:
        """The LaSO objective on a batch of pairs: features (B, D), multi-hot labels (B, N_base)."""
        z_int = self.intersection(torch.cat([fx, fy], dim=1))
        z_uni = self.union(torch.cat([fx, fy], dim=1))
        z_sub = self.subtraction(torch.cat([fx, fy], dim=1))
        bce = F.binary_cross_entropy_with_logits
        classification = bce(self.classifier(fx), lx) + bce(self.classifier(fy), ly)
        set_operations = (
            bce(self.classifier(z_int), lx * ly)
            + bce(self.classifier(z_uni), torch.maximum(lx, ly))
            + bce(self.classifier(z_sub), lx * (1.0 - ly))
        )
        z_sub_reverse = self.subtraction(torch.cat([fy, fx], dim=1))
        reconstruction = F.mse_loss(self.union(torch.cat([z_sub, z_int], dim=1)), fx) + F.mse_loss(
            self.union(torch.cat([z_sub_reverse, z_int], dim=1)), fy
        )
        symmetry = F.mse_loss(z_int, self.intersection(torch.cat([fy, fx], dim=1))) + F.mse_loss(
            z_uni, self.union(torch.cat([fy, fx], dim=1))
        )
        return (
            classification
            + set_operations
            + self.reconstruction_weight * reconstruction
            + self.symmetry_weight * symmetry
        )

    # ----------------------------------------------------------------------------------------- episodes
    def predict(self, episode: Episode) -> np.ndarray:
        check_episode(episode, self.name, int(self.feature_mean.shape[0]), self.zero_shot, self.few_shot)
        support = standardise(episode.support_features, self.feature_mean, self.feature_std)
        support_targets = torch.as_tensor(episode.support_targets, dtype=torch.float32).gt(0.5).float()
        synthetic, synthetic_targets = None, None
        if self.union_augmentation and self.max_union_pairs > 0 and support.shape[0] > 1:
            first, second = self._union_pairs(support.shape[0], episode.seed)
            with torch.no_grad():
                synthetic = self.union(torch.cat([support[first], support[second]], dim=1))
            synthetic_targets = torch.maximum(support_targets[first], support_targets[second])

        classifier = linear(support.shape[1], episode.n_labels, torch.Generator(), zero=True)
        optimiser = torch.optim.Adam(
            classifier.parameters(), lr=self.episode_lr, weight_decay=self.episode_weight_decay
        )
        bce = F.binary_cross_entropy_with_logits
        for _ in range(self.episode_steps):
            loss = bce(classifier(support), support_targets)
            if synthetic is not None:
                loss = 0.5 * loss + 0.5 * bce(classifier(synthetic), synthetic_targets)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            queries = standardise(episode.query_features, self.feature_mean, self.feature_std)
            logits = classifier(queries)
        return torch.sigmoid(logits.double()).numpy()

    def _union_pairs(self, n_support: int, episode_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """All support pairs i < j, or ``max_union_pairs`` of them drawn with the episode's seed."""
        first, second = np.triu_indices(n_support, k=1)
        if first.size > self.max_union_pairs:
            rng = numpy_rng(self.seed, episode_seed, 2)
            keep = np.sort(rng.choice(first.size, size=self.max_union_pairs, replace=False))
            first, second = first[keep], second[keep]
        return first, second

