"""Linear probe: per-label L2-regularised logistic regression on frozen global features, fitted per episode.

Device: computes on the CPU whatever its task was given (``uses_device`` False; issue 37 moved lcm, laso and
protonet to the task's device, not this method).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.metrics import episode_map
from mlfsic.methods.api import Deviation, Episode, Method, SplitData, register
from mlfsic.methods.torch_utils import check_episode, check_fit_splits, fit_standardiser
from mlfsic.methods.val_selection import choose_per_shot, nearest_shot

FEATURE_MODES = ("l2", "centre_l2", "standardise_l2")
BALANCE_MODES = ("val", "on", "off")
BIAS_L2 = 1e-4  # a small penalty on the bias, so a label no support image lacks still has a finite optimum
STEP_SIZES = tuple([2.0**-i for i in range(10)] + [0.0])  # Newton line-search candidates, tried together
ARMIJO = 1e-4  # sufficient-decrease constant of the line search
ROUNDING_SLACK = 1e-13  # relative objective increase the line search tolerates (float64 rounding of the loss)
PROBLEM_BUDGET = 1 << 24  # float64 elements of the stacked Newton systems solved at once (~128 MB); speed only


@register("linear-probe")
class LinearProbe(Method):
    """Linear probe (Tian et al., "Rethinking few-shot image classification: a good embedding is all you
    need?", ECCV 2020; Radford et al., "Learning Transferable Visual Models From Natural Language
    Supervision" (CLIP), ICML 2021, whose linear-probe evaluation is L2-regularised logistic regression
    with the regularisation strength chosen on a validation split). Kshot only; no training on the base
    split besides the feature statistics.

    Per episode (n_s support images, N labels, D feature size), one-vs-rest over the episode's labels:
    label j is a binary problem over the support images, positive for the images carrying j and negative
    for every other support image (multi-label targets: an image is positive for each label it carries)::

        x = normalise(feature)                                           (D,), unit L2 norm
        min_{w_j, b_j}  sum_i c_ij BCE(w_j . x_i + b_j, y_ij) + l2/2 ||w_j||^2 + 1e-4/2 b_j^2
        score(query, j) = sigmoid(w_j . x_query + b_j)                                  -> (n_q, N)

    ``c_ij`` sum to 1 per label: 1/n_s each (balance off), or half the weight on the label's positives and
    half on its negatives (balance on; all of it on the positives when no support image lacks the label).
    Features (``features``): ``standardise_l2`` (default) standardises with the base split's per-dimension
    mean and std and then L2-normalises; ``centre_l2`` subtracts the base mean only; ``l2`` L2-normalises the
    raw features, as Tian et al. do.

    Solver: the problem is solved exactly (to convergence), not by a fixed budget of gradient steps, so
    the scores do not depend on a learning rate or on the other episodes of a batch. By the representer
    theorem w_j = X^T a_j (X the (n_s, D) support features), so each problem has n_s + 1 unknowns whatever
    D is: logits z = K a + b with the Gram matrix K = X X^T. ``newton_steps`` damped Newton steps from
    zero, each solving the (n_s + 1)-square system [[S K + l2 I, s], [s^T K, sum(s) + 1e-4]] (S = diag of
    s_i = c_i p_i (1 - p_i); the Newton system with its common factor K dropped, whose solutions are
    Newton directions even when K is singular), then a backtracking (Armijo) line search over the step
    sizes 1, 1/2, ..., 2^-9, 0, evaluated together, keeping the largest with sufficient decrease (up to
    the objective's float rounding, so that the last, quadratically converging steps are taken). In
    float64; the largest gradient norm left is ``predict_report["max_grad_norm"]`` (about 1e-15 on
    coco-moji; 30 steps are several more than needed).

    Batching (``predict_batch``, what the harness calls per chunk): every (episode, label) problem of a
    chunk is solved at once along leading (episode, label) dimensions, episodes grouped by label count and
    padded to the longest support set (padded rows carry zero loss weight and an identity block in K, so
    their coefficients stay exactly zero and never touch the real ones). Each problem's step size is its
    own, so an episode's scores do not depend on the other episodes; ``predict`` is ``predict_batch`` of
    one episode, and the two agree to float rounding of a converged optimum (tested at 1e-12).

    Model selection on val (``fit(base, val)``; the base split only gives the feature statistics): the
    harness does not tell ``fit`` which K it will evaluate, so a setting is chosen for each K of
    ``val_shots`` (1 and 5) and stored; ``predict`` uses the one of the nearest K (ties: the smaller).
    For each K, ``n_val_episodes`` episodes are drawn once from the seed on the val split by the harness's
    default ``release`` sampler (all val labels with at least K + ``n_query`` images, ``n_query`` query images
    per label), and every pair of ``l2_grid`` x balance (on, off; only the given one unless
    ``balance="val"``) is scored by its mean val mAP; the best is kept (exact ties: the earlier pair, balance
    on before off, ``l2_grid`` in its order). ``fit_report`` records the chosen values, their val mAP and
    the whole grid. Without a val split (``eval_split=val``), or when val has fewer than 2 usable labels,
    ``l2`` and balance on (or the given balance) are used for every K, and ``fit_report`` says so. An empty
    ``l2_grid`` fixes ``l2``.

    Defaults, from the coco-moji VAL split (``eval_split=val``, so ``fit`` gets no val split and each
    variant's fixed values are used; 100 episodes, seed 0; mAP 1shot / 5shot; the table is in
    configs/methods/linear-probe.yaml): l2 = 1e-3..1e-2 is best (standardise_l2: 55.8 / 70.5 and
    55.8 / 70.6), larger is worse (1e-1: 55.4 / 68.9; 1: 55.1 / 68.0), smaller too (1e-4: 55.5 / 69.9;
    1e-6: 52.6 / 67.1); class balancing moves mAP by at most 0.5 (at l2 = 1e-6) and 0.2 for l2 >= 1e-3;
    ``standardise_l2`` and ``centre_l2`` agree within 0.1; raw ``l2`` ties at 1e-3 and is up to 0.9 worse
    at larger l2. Hence ``l2 = 0.01`` (the fallback without val), a grid around it, and balance on as the
    fallback (the usual choice for one-vs-rest with few positives; val does not separate the two).

    Choices not from the papers: the bias gets a tiny L2 penalty (1e-4) so that every problem has a finite
    optimum; features are standardised before L2 normalisation by default (the small CNN's features are
    post-ReLU, so raw L2-normalised features share a large common direction); both papers fit on more
    data than a K-shot support set. The seed only draws the val episodes: the solver has no randomness.
    """

    zero_shot = False
    few_shot = True
    needs_local_features = False
    deviations = (
        Deviation(what="Tian et al. fit one multi-class logistic regression per episode (scikit-learn, L-BFGS); "
                       "here each episode label is its own binary problem over the support images (one-vs-rest, "
                       "multi-label targets), solved exactly by damped Newton steps, with a 1e-4 penalty on the bias",
                  why="episodes are multi-label: an image carries several labels, so a softmax over labels does not apply",
                  effect="not measured: no released multi-label probe to compare with"),
        Deviation(what="the L2 strength (grid 1e-4..1) and class balancing are chosen per K (1, 5) on 40 val episodes "
                       "drawn by fit; CLIP's probe sweeps its C on a val split, Tian et al. keep scikit-learn's default",
                  why="the harness's rule: every choice on val, never on the novel split",
                  effect="val (fit_val=true, 100 episodes, seed 0): 55.8 / 70.6 mAP (1/5-shot) against 55.8 / 70.4 "
                         "with the fixed l2=0.01 and balance on", split="val"),
        Deviation(what="features standardised with the base split's per-dimension mean and std, then L2-normalised "
                       "(Tian et al. L2-normalise the raw features)",
                  why="the SmallCNN's features are not centred",
                  effect="within 0.1 mAP of centring only; raw L2 ties at l2=1e-3 and is up to 0.9 worse at larger l2 "
                         "(val, 100 episodes, seed 0)", split="val"),
    )

    def __init__(
        self,
        seed: int = 0,
        l2_grid: list[float] = [0.0001, 0.001, 0.01, 0.1, 1.0],  # noqa: B006 - copied, never mutated
        l2: float = 0.01,
        balance: str = "val",
        features: str = "standardise_l2",
        newton_steps: int = 30,
        n_val_episodes: int = 40,
        val_shots: list[int] = [1, 5],  # noqa: B006 - copied, never mutated
        n_query: int = 4,
    ) -> None:
        super().__init__(seed)
        if balance not in BALANCE_MODES:
            raise MlfsicError(f"linear-probe: balance must be one of {', '.join(BALANCE_MODES)}, got {balance!r}")
        if features not in FEATURE_MODES:
            raise MlfsicError(f"linear-probe: features must be one of {', '.join(FEATURE_MODES)}, got {features!r}")
        grid = [float(value) for value in l2_grid]
        if any(not value > 0.0 for value in [*grid, float(l2)]):
            raise MlfsicError(f"linear-probe: l2 and every l2_grid value must be > 0, got l2={l2}, l2_grid={l2_grid}")
        if newton_steps < 1 or n_query < 1 or not val_shots or any(int(k) < 1 for k in val_shots):
            raise MlfsicError("linear-probe: newton_steps and n_query must be >= 1, val_shots a non-empty list of "
                              "K >= 1")
        self.l2_grid = grid
        self.l2 = float(l2)
        self.balance = balance
        self.features = features
        self.newton_steps = int(newton_steps)
        self.n_val_episodes = int(n_val_episodes)
        self.val_shots = sorted({int(k) for k in val_shots})
        self.n_query = int(n_query)

    # ------------------------------------------------------------------------------------------- fit
    def fit(self, base: SplitData, val: SplitData | None) -> None:
        check_fit_splits(base, val, self.name)
        self.feature_mean, self.feature_std = fit_standardiser(base.features)
        default = {"l2": self.l2, "balance": self.balance != "off"}
        balances = [True, False] if self.balance == "val" else [self.balance == "on"]
        grid = [(l2, balanced) for balanced in balances for l2 in (self.l2_grid or [self.l2])]

        def score_grid(episodes: list[tuple[Episode, np.ndarray]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            rows = []
            for l2, balanced in grid:
                scores, _ = self._scores([e for e, _ in episodes], [l2] * len(episodes), [balanced] * len(episodes))
                val_map = float(np.mean([episode_map(s, t) for s, (_, t) in zip(scores, episodes)]))
                rows.append({"l2": l2, "balance": balanced, "val_map": round(val_map, 6)})
            return rows, {}

        self.chosen, report, notes = choose_per_shot(val, self.val_shots, self.n_val_episodes, self.n_query, self.seed,
                                                     default, score_grid)
        self.fit_report = {"features": self.features, **report}
        if notes:
            self.fit_report["note"] = (f"constructor defaults used (l2={self.l2}, balance "
                                       f"{'on' if default['balance'] else 'off'}): " + "; ".join(notes))

    # --------------------------------------------------------------------------------------- predict
    def setting_for(self, k_shot: int) -> dict[str, Any]:
        """The chosen ``{"l2", "balance"}`` of the stored K nearest to ``k_shot`` (ties: the smaller K)."""
        return nearest_shot(self.chosen, k_shot)

    def predict(self, episode: Episode) -> np.ndarray:
        return self.predict_batch([episode])[0]

    def predict_batch(self, episodes: list[Episode]) -> list[np.ndarray]:
        """Scores of a chunk of episodes, all solved together (see the class docstring)."""
        for episode in episodes:
            check_episode(episode, self.name, int(self.feature_mean.shape[0]), self.zero_shot, self.few_shot)
        settings = [self.setting_for(episode.k_shot) for episode in episodes]
        scores, self.predict_report = self._scores(episodes, [float(s["l2"]) for s in settings],
                                                   [bool(s["balance"]) for s in settings])
        return scores

    # ---------------------------------------------------------------------------------------- solver
    def _normalise(self, features: np.ndarray) -> torch.Tensor:
        """(n, D) float32 array -> (n, D) float64 tensor of unit rows (``features`` mode)."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if self.features == "standardise_l2":
            x = (x - self.feature_mean) / self.feature_std
        elif self.features == "centre_l2":
            x = x - self.feature_mean
        x = x.double()
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def _scores(self, episodes: list[Episode], l2: list[float], balance: list[bool]
                ) -> tuple[list[np.ndarray], dict[str, float | int]]:
        """Per episode its (n_q, N) float64 scores, from logistic regressions fitted with its own ``l2`` and
        ``balance``, and a report (episodes, Newton steps, the largest gradient norm left). Episodes are
        grouped by label count, sorted by support size and solved in groups of at most ``PROBLEM_BUDGET``
        stacked system elements (grouping changes no result, only speed and memory)."""
        results: list[np.ndarray] = [np.zeros(0)] * len(episodes)
        problems = [_Problem(i, self._normalise(e.support_features),
                             torch.as_tensor(np.asarray(e.support_targets) > 0.5, dtype=torch.float64),
                             self._normalise(e.query_features), l2[i], balance[i]) for i, e in enumerate(episodes)]
        worst = 0.0
        for n_labels in sorted({e.n_labels for e in episodes}):
            group = sorted((p for p, e in zip(problems, episodes) if e.n_labels == n_labels),
                           key=lambda p: (p.support.shape[0], p.index))
            start = 0
            while start < len(group):
                size = 1
                while (start + size < len(group)
                       and (size + 1) * n_labels * (group[start + size].support.shape[0] + 1) ** 2 <= PROBLEM_BUDGET):
                    size += 1
                part = group[start:start + size]
                part_scores, grad_norm = solve_logistic(part, self.newton_steps)
                worst = max(worst, grad_norm)
                for problem, logits in zip(part, part_scores):
                    results[problem.index] = torch.sigmoid(logits).numpy()
                start += size
        return results, {"episodes": len(episodes), "newton_steps": self.newton_steps, "max_grad_norm": worst}


@dataclass
class _Problem:
    """One episode for ``solve_logistic``: its place in the chunk, normalised support (n_s, D) and query
    (n_q, D) features, float64; support targets (n_s, N) in {0, 1}; its L2 strength and class balancing."""

    index: int
    support: torch.Tensor
    targets: torch.Tensor
    query: torch.Tensor
    l2: float
    balance: bool


def solve_logistic(part: list[_Problem], newton_steps: int) -> tuple[list[torch.Tensor], float]:
    """Fit the N one-vs-rest logistic regressions of each episode of ``part`` (same N), all stacked along
    (E, N), by damped Newton in the representer form (see ``LinearProbe``); return each episode's query
    logits w . x + b, (n_q, N) float64, and the largest norm of the gradient (w.r.t. w and b) left at the end."""
    size = len(part)
    rows = max(int(p.support.shape[0]) for p in part)
    n_labels = int(part[0].targets.shape[1])
    dim = int(part[0].support.shape[1])
    support = torch.zeros(size, rows, dim, dtype=torch.float64)
    targets = torch.zeros(size, n_labels, rows, dtype=torch.float64)
    mask = torch.zeros(size, rows, dtype=torch.float64)
    for slot, p in enumerate(part):
        n = p.support.shape[0]
        support[slot, :n] = p.support
        targets[slot, :, :n] = p.targets.T
        mask[slot, :n] = 1.0
    l2 = torch.tensor([p.l2 for p in part], dtype=torch.float64).view(size, 1, 1)  # (E, 1, 1)
    balanced = torch.tensor([p.balance for p in part]).view(size, 1, 1)

    # loss weights c (E, N, n): per label summing to 1 over the real rows
    real = mask.unsqueeze(1)
    positive, negative = targets * real, (1.0 - targets) * real
    n_pos, n_neg = positive.sum(-1, keepdim=True), negative.sum(-1, keepdim=True)
    plain = real / real.sum(-1, keepdim=True)
    halves = torch.where(n_neg > 0, 0.5 * positive / n_pos.clamp_min(1.0) + 0.5 * negative / n_neg.clamp_min(1.0),
                         positive / n_pos.clamp_min(1.0))
    weights = torch.where(balanced, halves, plain)

    gram = support @ support.transpose(1, 2) + torch.diag_embed(1.0 - mask)  # (E, n, n); padded rows: identity
    eye = torch.eye(rows, dtype=torch.float64)
    alpha = torch.zeros(size, n_labels, rows, dtype=torch.float64)
    bias = torch.zeros(size, n_labels, dtype=torch.float64)
    steps = torch.tensor(STEP_SIZES, dtype=torch.float64)  # (T,)

    def objective(z: torch.Tensor, quadratic: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """At T points per problem: z (E, N, T, n), quadratic = a^T K a (E, N, T), b (E, N, T) -> (E, N, T)."""
        loss = (weights.unsqueeze(-2) * (F.softplus(z) - targets.unsqueeze(-2) * z)).sum(-1)
        return loss + 0.5 * l2 * quadratic + 0.5 * BIAS_L2 * b.square()

    for _ in range(newton_steps):
        k_alpha = alpha @ gram  # (E, N, n): K a (K symmetric)
        z = k_alpha + bias.unsqueeze(-1)
        prob = torch.sigmoid(z)
        g = weights * (prob - targets)  # dloss/dz
        s = weights * prob * (1.0 - prob)  # d2loss/dz2
        r_alpha = g + l2 * alpha  # the gradient w.r.t. a is K r_alpha
        r_bias = g.sum(-1) + BIAS_L2 * bias
        system = torch.zeros(size, n_labels, rows + 1, rows + 1, dtype=torch.float64)
        system[..., :rows, :rows] = s.unsqueeze(-1) * gram.unsqueeze(1) + l2.unsqueeze(-1) * eye
        system[..., :rows, rows] = s
        system[..., rows, :rows] = s @ gram
        system[..., rows, rows] = s.sum(-1) + BIAS_L2
        rhs = -torch.cat([r_alpha, r_bias.unsqueeze(-1)], dim=-1)
        direction = torch.linalg.solve(system, rhs)
        d_alpha, d_bias = direction[..., :rows], direction[..., rows]
        k_d_alpha = d_alpha @ gram
        # objective at every step size t: z + t dz, a^T K a + 2t a^T K d + t^2 d^T K d, b + t db -> (E, N, T)
        dz = k_d_alpha + d_bias.unsqueeze(-1)
        z_t = z.unsqueeze(-2) + steps.view(-1, 1) * dz.unsqueeze(-2)  # (E, N, T, n)
        a_k_a, a_k_d, d_k_d = ((alpha * k_alpha).sum(-1), (alpha * k_d_alpha).sum(-1), (d_alpha * k_d_alpha).sum(-1))
        quadratic = a_k_a.unsqueeze(-1) + 2.0 * steps * a_k_d.unsqueeze(-1) + steps.square() * d_k_d.unsqueeze(-1)
        b_t = bias.unsqueeze(-1) + steps * d_bias.unsqueeze(-1)
        values = objective(z_t, quadratic, b_t)  # (E, N, T); the last step size is 0: the current objective
        slope = (r_alpha * k_d_alpha).sum(-1) + r_bias * d_bias  # directional derivative, <= 0
        start = values[..., -1:]
        # Armijo: the largest step with enough decrease; ROUNDING_SLACK accepts the last Newton steps, whose
        # decrease is below the objective's rounding (a least-objective rule would stall there, at a point
        # that depends on rounding, so on the batch)
        accept = values <= start + ARMIJO * steps * slope.unsqueeze(-1) + ROUNDING_SLACK * (1.0 + start.abs())
        t = steps[accept.to(torch.int8).argmax(dim=-1)]  # the first acceptable (step 0 always is), (E, N)
        alpha = alpha + t.unsqueeze(-1) * d_alpha
        bias = bias + t * d_bias
    # the gradient at the final point: X^T r_alpha w.r.t. w (padded rows of X are zero), r_bias w.r.t. b
    z = alpha @ gram + bias.unsqueeze(-1)
    g = weights * (torch.sigmoid(z) - targets)
    r_alpha, r_bias = g + l2 * alpha, g.sum(-1) + BIAS_L2 * bias
    grad_norm = torch.cat([r_alpha @ support, r_bias.unsqueeze(-1)], dim=-1).norm(dim=-1).max()

    scores = []
    for slot, p in enumerate(part):
        n = p.support.shape[0]
        scores.append((p.query @ p.support.T) @ alpha[slot, :, :n].T + bias[slot])  # (n_q, N) logits
    return scores, float(grad_norm)
