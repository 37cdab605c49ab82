"""Training the tiny CLIP teacher (docs/architecture.md §7.1); ``mlfsic teacher train`` is ``cli/teacher.py``.

``train_teacher`` fits the tiny teacher of ``backbones/open_clip.py`` contrastively (Radford et al., "Learning
Transferable Visual Models From Natural Language Supervision", ICML 2021: the symmetric InfoNCE loss
over a batch of image-caption pairs) on the OpenMoji glyph+name corpus of one regime
(``mlfsic.datasets.openmoji_corpus``). Only the image tower, the text projection and the logit scale are
trained; MiniLM is frozen, so each distinct caption is encoded once before training (as LiT, Zhai et al.
CVPR 2022, locks a pretrained tower). Captions that repeat in a batch (two images of the same glyph) are
all positives of each other: the targets are spread evenly over them.

Training is deterministic for a fixed number of threads (``TRAIN_THREADS``) on one machine: the same
settings reproduce the shipped file byte for byte there. A sweep never trains the teacher.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mlfsic.harness.backbones import open_clip as clip_models
from mlfsic.harness.backbones.weights import save_state
from mlfsic.harness.backbones.embeddings import PROMPT
from mlfsic.harness.io import sha256_file, write_json_atomic

TRAIN_THREADS = 2


def _caption_features(model: torch.nn.Module, tokenizer: Any, captions: list[str], batch_size: int = 256) -> torch.Tensor:
    """Mean-pooled frozen MiniLM outputs (n, 384) of ``captions``: the text projection's input."""
    text = model.text
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(captions), batch_size):
            tokens = tokenizer(captions[start:start + batch_size])
            mask = (tokens != text.config.pad_token_id).long()
            out = text.transformer(input_ids=tokens, attention_mask=mask)
            chunks.append(text.pooler(out, mask))
    return torch.cat(chunks).clone()


def _normalised(images: np.ndarray) -> torch.Tensor:
    from mlfsic.harness.backbones.images import to_tensor

    return to_tensor(images, clip_models.CLIP_MEAN, clip_models.CLIP_STD)


def train_teacher(settings: Mapping[str, Any], out_path: Path, corpus_cache: Path, progress: bool = True) -> dict[str, Any]:
    """Train the tiny teacher with ``settings`` (``open_clip.teacher_settings``) and save its trained state at ``out_path``."""
    from mlfsic.datasets.openmoji_corpus import load_or_build_corpus, summary

    started = time.perf_counter()
    torch.set_num_threads(TRAIN_THREADS)
    image_size = clip_models.TINY_TEACHER_VISION["image_size"]
    corpus = load_or_build_corpus(corpus_cache, str(settings["regime"]), int(settings["corpus_seed"]),
                                  int(settings["corpus_images"]), image_size, progress=progress)
    torch.manual_seed(int(settings["seed"]))
    model = clip_models.build_tiny_teacher()
    tokenizer = clip_models.tiny_teacher_tokenizer()
    model.text.transformer.requires_grad_(False)
    model.text.transformer.eval()
    distinct = sorted(set(corpus.captions))
    caption_index = {caption: row for row, caption in enumerate(distinct)}
    caption_ids = torch.tensor([caption_index[caption] for caption in corpus.captions])
    pooled = _caption_features(model, tokenizer, distinct)
    corpus_seconds = time.perf_counter() - started

    trainable = [p for name, p in model.named_parameters() if not name.startswith("text.transformer.")]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": float(settings["weight_decay"])},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=float(settings["lr"]))
    batch_size = int(settings["batch_size"])
    n = len(corpus.captions)
    steps_per_epoch = n // batch_size
    total = steps_per_epoch * int(settings["epochs"])
    warmup = int(settings["warmup_steps"])

    def learning_rate(step: int) -> float:  # linear warm-up, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, learning_rate)
    generator = torch.Generator().manual_seed(int(settings["seed"]))
    losses: list[float] = []
    model.visual.train()
    bar = tqdm(total=total, desc=f"teacher {settings['regime']}", unit="step", disable=None if progress else True)
    log_lines = progress and bar.disable  # not a terminal: one plain line per epoch instead of a bar
    for _ in range(int(settings["epochs"])):
        order = torch.randperm(n, generator=generator)
        epoch_loss = 0.0
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            images = _normalised(corpus.images[index.numpy()])
            image_emb = F.normalize(model.visual(images), dim=-1)
            text_emb = F.normalize(model.text.proj(pooled[caption_ids[index]]), dim=-1)
            logits = model.logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
            same = (caption_ids[index][:, None] == caption_ids[index][None, :]).float()
            targets = same / same.sum(dim=1, keepdim=True)
            loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            epoch_loss += loss.item()
            bar.update(1)
        losses.append(epoch_loss / max(1, steps_per_epoch))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if log_lines:
            print(f"teacher {settings['regime']}: epoch {len(losses)}/{settings['epochs']}, {steps_per_epoch} steps, "
                  f"loss {losses[-1]:.4f}, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    bar.close()
    model.eval()
    save_state(clip_models.trained_state(model), out_path)
    return {
        "model": clip_models.TINY_TEACHER, "settings": dict(settings), "corpus": summary(corpus),
        "corpus_id": corpus.corpus_id, "n_distinct_captions": len(distinct), "steps": total,
        "train_loss": [round(x, 6) for x in losses], "threads": TRAIN_THREADS,
        "corpus_seconds": round(corpus_seconds, 3), "seconds": round(time.perf_counter() - started, 3),
    }


def image_embeddings(clip: clip_models.ClipModel, images: np.ndarray) -> torch.Tensor:
    """Projected image embeddings (n, E) of uint8 ``images``, in batches of 256."""
    with torch.inference_mode():
        return torch.cat([clip.model.encode_image(_normalised(images[start:start + 256]))
                          for start in range(0, len(images), 256)])


def zero_shot_ap(clip: clip_models.ClipModel, embeddings: torch.Tensor, targets: np.ndarray, labels: list[str]) -> np.ndarray:
    """AP per label (macro: its mean) of the cosine between image ``embeddings`` and label texts (``PROMPT``)."""
    from mlfsic.harness.protocol.metrics import per_label_ap

    text = clip.encode_text([PROMPT.format(label=label) for label in labels])
    scores = (F.normalize(embeddings, dim=-1) @ text.T).numpy().astype(np.float64)
    return per_label_ap(scores, targets)


def trained_teacher(backbone_cfg: Mapping[str, Any], cache_root: Path, progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Train the configured teacher into ``cache_root/teachers`` (always: ``mlfsic teacher train`` only)."""
    from mlfsic.harness.io import file_lock, sha256_json

    settings = clip_models.teacher_settings(backbone_cfg)
    code = [sha256_file(module.__file__) for module in (clip_models,) if module.__file__]
    key = sha256_json({**clip_models.teacher_trained_on(settings), "code": code, "this": sha256_file(__file__)})
    path = cache_root / "teachers" / f"tiny_teacher-{settings['regime']}-{key[:16]}.pt"
    with file_lock(path.with_suffix(".lock")):
        report = train_teacher(settings, path, cache_root / "corpus", progress)
        write_json_atomic(path.with_suffix(".json"), {"trained_on": clip_models.teacher_trained_on(settings), "training": report})
    return path, report


