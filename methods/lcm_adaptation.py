"""Test-time support adaptation of LCM / WVGA, batched over the episodes of a chunk.

The authors' released pipeline (TOMM-FSIC, ``train_eval.main`` with ``meta_train: true`` calling
``Model.meta_train``, ``models/atten_purify.py``) fine-tunes the network on an episode's support set
before it builds that episode's prototypes: Adam steps on the cross-modal alignment loss of the support
images, ``BCEWithLogits(s * (1 - d(vis_fc(avgpool(rho * layer4)), tex_fc(words))), support targets)``,
through the purify mask ``rho`` (one map of local positions per support image). The gradient hook on
``rho`` accumulates ``|dL/drho * rho|`` as an EMA: these are the LCM importance scores, a by-product of
the same steps. Before every step but the first, ``rho`` is min-max normalised per image and its zeros
are replaced by the image's second-smallest value (``sorted[:, 1]``, so tied zeros stay zero).

Here the steps update ``rho`` (with the mask), ``vis_fc`` and ``tex_fc`` (the backbone is frozen; with
``tie_local_projection`` the local tokens share ``vis_fc``, so the local projection adapts with it), on a
copy per episode: every parameter has a leading episode dimension B, the per-episode losses are summed
(each episode's gradient is that of its own loss) and Adam is elementwise, so episode b's result is the
one it would get alone, up to float rounding. Support sets of different sizes are padded and masked.

Shapes: B episodes, n support images (padded), L local positions, C channels (= D, the global feature is
the mean of the local grid), N labels, E word-embedding size, H joint size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as released
ADAM_EPS = 1e-8
SUB_BATCH = int(os.environ.get("MLFSIC_ADAPT_SUB_BATCH", "16"))  # episodes stepped together (speed only)


@dataclass
class Adapted:
    """Per-episode weights after adaptation, and what the steps measured.

    ``vis_weight`` (B, H, D) / ``vis_bias`` (B, H) act on standardised global (or pooled) features;
    ``tex_weight`` (B, H, E) / ``tex_bias`` (B, H) on the model's word vectors; ``scores`` (B, n, L) the
    hook-EMA importance of every local position (None without the mask); ``first_loss`` / ``last_loss``
    (B,) the support alignment loss at the first and the last step.
    """

    vis_weight: torch.Tensor
    vis_bias: torch.Tensor
    tex_weight: torch.Tensor
    tex_bias: torch.Tensor
    scores: torch.Tensor | None
    first_loss: torch.Tensor
    last_loss: torch.Tensor


def renormalise_mask(rho: torch.Tensor) -> torch.Tensor:
    """The released per-image renormalisation of the purify mask: min-max over positions, then every
    zero replaced by the image's second-smallest value (so several tied minima stay zero). An image
    whose mask is constant (nothing learnt yet, or a padded row) is left as it is.

    rho (..., L) -> (..., L).

    Example:
        >>> renormalise_mask(torch.tensor([[2.0, 4.0, 3.0]])).tolist()
        [[0.5, 1.0, 0.5]]
        >>> renormalise_mask(torch.tensor([[1.0, 1.0, 3.0]])).tolist()
        [[0.0, 0.0, 1.0]]
    """
    if rho.shape[-1] < 2:  # one position: nothing to renormalise against
        return rho
    low, high = rho.min(dim=-1, keepdim=True).values, rho.max(dim=-1, keepdim=True).values
    spread = high - low
    scaled = (rho - low) / spread.clamp_min(1e-12)
    second = scaled.topk(2, dim=-1, largest=False).values[..., 1:2]  # the sorted row's [1]
    scaled = torch.where(scaled > 0, scaled, second)
    return torch.where(spread > 0, scaled, rho)


def warmup_lr(lr: float, step: int, warmup_steps: int) -> float:
    """The released schedule's shape (``train_eval.py`` ~178-198): step ``step`` (from 1) of a linear warm-up
    from lr/100 to ``lr`` over ``warmup_steps`` steps, then ``lr`` (at once with ``warmup_steps`` <= 1).
    Used by lcm's training and by the test-time adaptation."""
    return lr * (0.01 + 0.99 * min(1.0, step / max(1, warmup_steps)))


def ema_weight(step: int) -> float:
    """The weight of the old score in the released hook's EMA at 1-based step ``step`` (the model's
    ``iters``): ``min(1 - 1 / (step + 1), 0.95)``; the first step sets the score."""
    return 0.0 if step <= 1 else min(1.0 - 1.0 / (step + 1), 0.95)


def alignment_logits(visual: torch.Tensor, prototypes: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * (1 - d)`` with d the Euclidean distance of the L2-normalised vectors (in [0, 2]): the
    released code's ``(1 - Model.dis(x, y)) * 20``.

    visual (..., n, H), prototypes (..., N, H) -> logits (..., n, N) in [-scale, scale].
    """
    cosine = F.normalize(visual, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(-1, -2)
    distance = (2.0 - 2.0 * cosine).clamp_min(1e-12).sqrt()
    return scale * (1.0 - distance)


def alignment_bce(visual: torch.Tensor, words: torch.Tensor, targets: torch.Tensor, image_mask: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """Per-episode mean BCE of ``alignment_logits`` against targets over the real (image, label) entries:
    visual (B, n, H), words (B, N, H), targets (B, n, N), image_mask (B, n) bool -> (B,)."""
    logits = alignment_logits(visual, words, scale)
    entries = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * image_mask.unsqueeze(-1)
    counts = (image_mask.sum(dim=1) * targets.shape[-1]).clamp_min(1)
    return entries.sum(dim=(1, 2)) / counts


def project_words(words: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Per-episode ``tex_fc``: words (B, N, E) or shared (N, E), weight (B, H, E), bias (B, H) -> (B, N, H)."""
    if words.dim() == 3:
        return torch.baddbmm(bias.unsqueeze(1), words, weight.transpose(1, 2))
    batch, size, _ = weight.shape
    # (N, E) @ (E, B*H): one product whose long side is the output's (the fastest layout on CPU)
    return (words @ weight.reshape(batch * size, -1).T).reshape(-1, batch, size).transpose(0, 1) + bias.unsqueeze(1)


def adapt_to_supports(
    vis_weight: torch.Tensor,
    vis_bias: torch.Tensor,
    tex_weight: torch.Tensor,
    tex_bias: torch.Tensor,
    feature_mean: torch.Tensor,
    feature_std: torch.Tensor,
    support_global: torch.Tensor,
    support_local: torch.Tensor | None,
    targets: torch.Tensor,
    image_mask: torch.Tensor,
    words: torch.Tensor,
    steps: int,
    lr: float,
    scale: float,
    warmup_steps: int = 0,
) -> Adapted:
    """``steps`` Adam steps (``lr``) per episode on the support alignment loss, from the fitted weights.
    ``warmup_steps`` > 0: the lr rises linearly from lr/100 to lr over those steps, then stays (the released
    schedule's shape, ``train_eval.py`` ~178-198, which the release's ``meta_train`` loop also steps through).

    Args:
        vis_weight, vis_bias: (H, D), (H,) the fitted ``vis_fc`` (on standardised features).
        tex_weight, tex_bias: (H, E), (H,) the fitted ``tex_fc``.
        feature_mean, feature_std: (D,) the base split's standardisation of global features.
        support_global: (B, n, D) raw support global features (zeros in padded rows).
        support_local: (B, n, L, C) raw local features, or None: no purify mask (WVGA), the loss is taken
            on the global features and no scores are measured.
        targets: (B, n, N) support targets over the episode's labels; image_mask (B, n) bool real rows.
        words: (B, N, E) the model's word vectors of the episode's labels, or (N, E) when every episode
            has the same labels (then the word projection of all episodes is one matrix product).

    The fitted tensors are never modified: every episode starts from a copy. The episodes are stepped in
    sub-batches of ``SUB_BATCH`` (so each sub-batch's weights, gradients and Adam moments stay in cache).
    """
    batch = targets.shape[0]
    if batch > SUB_BATCH:
        parts = [adapt_to_supports(
            vis_weight, vis_bias, tex_weight, tex_bias, feature_mean, feature_std, support_global[i:i + SUB_BATCH],
            None if support_local is None else support_local[i:i + SUB_BATCH], targets[i:i + SUB_BATCH],
            image_mask[i:i + SUB_BATCH], words if words.dim() == 2 else words[i:i + SUB_BATCH], steps, lr, scale,
            warmup_steps) for i in range(0, batch, SUB_BATCH)]
        return Adapted(*(None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts])
                         for f in ("vis_weight", "vis_bias", "tex_weight", "tex_bias", "scores", "first_loss",
                                   "last_loss")))
    params = [p.detach().unsqueeze(0).repeat(batch, *([1] * p.dim())).requires_grad_(True)
              for p in (vis_weight, vis_bias, tex_weight, tex_bias)]
    weight_v, bias_v, weight_t, bias_t = params
    rho = None
    if support_local is not None:
        rho = torch.ones(support_local.shape[:3], dtype=support_local.dtype, device=support_local.device,
                         requires_grad=True)
        params.append(rho)
        positions = support_local.shape[2]
    # Adam is elementwise, so one optimiser over the batched tensors is B independent Adams; fused: one pass
    optimiser = torch.optim.Adam(params, lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=lr > 0)
    scores = None
    first_loss = last_loss = torch.zeros(batch, device=targets.device)
    for step in range(1, steps + 1):
        for group in optimiser.param_groups:
            group["lr"] = warmup_lr(lr, step, warmup_steps)
        if rho is not None and step > 1:
            with torch.no_grad():
                rho.copy_(renormalise_mask(rho))
        pooled = support_global if rho is None else torch.einsum("bnl,bnlc->bnc", rho, support_local) / positions
        standardised = (pooled - feature_mean) / feature_std
        visual = torch.baddbmm(bias_v.unsqueeze(1), standardised, weight_v.transpose(1, 2))  # (B, n, H)
        projected_words = project_words(words, weight_t, bias_t)  # (B, N, H)
        losses = alignment_bce(visual, projected_words, targets, image_mask, scale)
        optimiser.zero_grad(set_to_none=True)
        losses.sum().backward()
        with torch.no_grad():
            if step == 1:
                first_loss = losses.detach()
            last_loss = losses.detach()
            if rho is not None:  # the released gradient hook: EMA of |dL/drho * rho|
                change = (rho.grad * rho).abs()
                weight = ema_weight(step)
                scores = change if scores is None else weight * scores + (1.0 - weight) * change
        optimiser.step()
    return Adapted(weight_v.detach(), bias_v.detach(), weight_t.detach(), bias_t.detach(),
                   None if scores is None else scores.detach(), first_loss, last_loss)
