"""Reference methods (docs/architecture.md §8): ``random``, the sanity floor, and ``wordvec-zeroshot``, a DeViSE-style
visual-semantic embedding that scores labels known only by their word embedding.

Every other method should beat ``random`` clearly; ``wordvec-zeroshot`` is the simplest zero-shot method
a zero-shot result should be compared with.

Device: these baselines compute on the CPU whatever their task was given (``uses_device`` False: their
work is a few matrix products).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mlfsic.harness.errors import MlfsicError
from mlfsic.methods.api import Deviation, Episode, Method, SplitData, register
from mlfsic.methods.torch_utils import (
    check_split_data,
    check_episode,
    linear,
    minibatches,
    numpy_rng,
    standardise,
    standardised_base,
    torch_generator,
)


@register("random")
class RandomScores(Method):
    """Uniform random scores: the chance level of every metric (sanity floor). 0shot and Kshot.

    ``predict`` returns (n_query, N) scores drawn from a numpy ``Generator``. Each query row has its own
    stream, seeded by ``(seed, episode.seed, sha256 of the query's feature vector)``, so the scores of a
    query do not depend on which other queries are in the episode or on their order (the conformance
    tests hold every non-transductive method to that), and a re-run gives identical scores. ``fit`` only
    records the feature size, so episodes are checked like any other method's.
    """

    zero_shot = True
    few_shot = True

    def fit(self, base: SplitData, val: SplitData | None) -> None:
        check_split_data(base, self.name)
        self.feature_dim = int(base.features.shape[1])

    def predict(self, episode: Episode) -> np.ndarray:
        check_episode(episode, self.name, self.feature_dim, self.zero_shot, self.few_shot)
        queries = np.ascontiguousarray(episode.query_features, dtype=np.float32)
        scores = np.empty((queries.shape[0], episode.n_labels), dtype=np.float64)
        for row, query in enumerate(queries):
            content = int.from_bytes(hashlib.sha256(query.tobytes()).digest()[:16], "little")
            scores[row] = numpy_rng(self.seed, episode.seed, content).random(episode.n_labels)
        return scores


@register("wordvec-zeroshot")
class WordVectorZeroShot(Method):
    """DeViSE-style zero-shot classifier (Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model",
    NeurIPS 2013). 0shot only.

    A linear map ``M`` (D -> E) takes a standardised global image feature into the word-embedding space;
    a label is scored by the cosine between ``M x`` and its fixed word embedding ``t`` (L2-normalised)::

        x: (n, D) --M--> (n, E) --normalise-->  cos = (n, E) @ (N, E)^T  ->  scores = scale * cos (n, N)

    Training uses DeViSE's hinge rank loss in its multi-label form: for every base image, every positive
    label ``p`` and every negative label ``j``, ``max(0, margin - cos(Mx, t_p) + cos(Mx, t_j))``, averaged
    over the (image, p, j) triples of a mini-batch (Adam, ``epochs`` passes over the base split).
    ``scale`` only sets the magnitude of the scores (a cosine times ``scale`` reads like a logit); it
    changes no ranking.

    Simplifications: the visual model is the harness's frozen backbone (DeViSE fine-tunes its CNN's lower
    layers too); cosine similarity replaces DeViSE's dot product with unit-norm word vectors (it also
    normalises the image side); the rank loss sums over all negatives instead of stopping at the first
    violating one.
    """

    zero_shot = True
    few_shot = False
    deviations = (
        Deviation(what="the visual model is the harness's frozen backbone and only the linear map M is trained; "
                       "DeViSE also fine-tunes its CNN's lower layers",
                  why="features are computed once per image and shared by all methods (DESIGN section 7)",
                  effect="not measured: it needs per-method backbone training, which the feature store does not do"),
        Deviation(what="score: cosine between M x and the word vector (the image side normalised too); DeViSE takes "
                       "the dot product of M x with unit-norm word vectors",
                  why="not stated in the code history",
                  effect="not measured"),
        Deviation(what="hinge rank loss in a multi-label form, averaged over every (image, positive, negative) triple; "
                       "DeViSE has one positive label per image and stops at the first violating negative",
                  why="base images carry several labels",
                  effect="not measured"),
        Deviation(what="label vectors: the harness's MiniLM sentence embeddings by default; DeViSE uses its own "
                       "skip-gram word vectors",
                  why="MiniLM is the harness's bundled default (DESIGN section 6.3)",
                  effect="val 0-shot, 50-d GloVe minus MiniLM, paired: -4.9 [-5.8, -4.1] (GloVe, not DeViSE's "
                         "skip-gram vectors)", split="val"),
    )

    def __init__(
        self,
        seed: int = 0,
        epochs: int = 30,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        margin: float = 0.1,
        scale: float = 10.0,
        progress: bool = False,
    ) -> None:
        super().__init__(seed)
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.margin = margin
        self.scale = scale
        self.progress = progress

    def fit(self, base: SplitData, val: SplitData | None) -> None:
        features = standardised_base(self, base, val)
        generator = torch_generator(self.seed, 0)
        targets = torch.as_tensor(base.targets, dtype=torch.float32) > 0.5
        words = F.normalize(torch.as_tensor(base.label_embeddings, dtype=torch.float32), dim=-1)
        self.visual_to_word = linear(features.shape[1], words.shape[1], generator)
        optimiser = torch.optim.Adam(self.visual_to_word.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in tqdm(range(self.epochs), desc=f"{self.name} fit", disable=not self.progress):
            for batch in minibatches(features.shape[0], self.batch_size, generator):
                cosine = F.normalize(self.visual_to_word(features[batch]), dim=-1) @ words.T  # (B, N)
                loss = hinge_rank_loss(cosine, targets[batch], self.margin)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        self.visual_to_word.eval()

    def predict(self, episode: Episode) -> np.ndarray:
        check_episode(episode, self.name, int(self.feature_mean.shape[0]), self.zero_shot, self.few_shot)
        words = F.normalize(torch.as_tensor(episode.label_embeddings, dtype=torch.float32), dim=-1)
        if words.shape[1] != self.visual_to_word.out_features:
            raise MlfsicError(
                f"{self.name}: episode {episode.index} label_embeddings have size {words.shape[1]}, "
                f"the model was fitted with {self.visual_to_word.out_features}"
            )
        with torch.no_grad():
            queries = standardise(episode.query_features, self.feature_mean, self.feature_std)
            cosine = F.normalize(self.visual_to_word(queries), dim=-1) @ words.T
        return (self.scale * cosine).double().numpy()


def hinge_rank_loss(scores: torch.Tensor, positives: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of ``max(0, margin - s_p + s_j)`` over (row, positive p, negative j); scores/positives (B, N)."""
    violation = F.relu(margin - scores.unsqueeze(2) + scores.unsqueeze(1))  # (B, p, j)
    pairs = (positives.unsqueeze(2) & ~positives.unsqueeze(1)).float()
    return (violation * pairs).sum() / pairs.sum().clamp_min(1.0)
