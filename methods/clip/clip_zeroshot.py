"""``clip-zeroshot``: CLIP's zero-shot classifier (Radford et al., "Learning Transferable Visual Models From
Natural Language Supervision", ICML 2021), no training. 0shot only; needs an open_clip backbone.

A label is the text "There is a {label} in the scene" (the prompt of He et al., AAAI 2023) through the
backbone model's text tower; an image is its projected image embedding, which the feature store keeps as
the global feature of an open_clip backbone. The score is their cosine::

    scores = normalise(x) @ normalise(text(prompt(label)))^T      (n_query, n_labels)

Device (``uses_device``): the text tower and the product run on ``self.device`` (the task's,
``Method.use_device``) through ``on_device.clip_on``: the worker's shared CPU model itself on the CPU, else one
copy per device and process; scores come back as CPU numpy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mlfsic.harness.backbones.embeddings import PROMPT
from mlfsic.harness.errors import MlfsicError
from mlfsic.methods.api import Deviation, Episode, Method, SplitData, register
from mlfsic.methods.clip.on_device import clip_on, encode_text
from mlfsic.methods.torch_utils import check_episode, check_split_data



@register("clip-zeroshot")
class ClipZeroShot(Method):
    zero_shot = True
    few_shot = False
    needs_clip = True
    uses_device = True
    deviations = (
        Deviation(what="a label's text is MKT's prompt 'There is a {label} in the scene', one prompt; CLIP's zero-shot "
                       "classifiers use 'A photo of a {label}.' and dataset-specific prompt ensembles",
                  why="not stated in the code history; it is the one prompt the harness shares with mkt "
                      "(harness.backbones.embeddings.PROMPT)",
                  effect="not measured: a run with +method_args.clip-zeroshot.prompt='A photo of a {label}.' on val "
                         "(eval_split=val) would measure the single-prompt part"),
    )

    def __init__(self, seed: int = 0, prompt: str = PROMPT) -> None:
        super().__init__(seed)
        if "{label}" not in prompt:
            raise MlfsicError(f"clip-zeroshot: prompt {prompt!r} has no '{{label}}' placeholder")
        self.prompt = prompt
        self._texts: dict[tuple[str, ...], torch.Tensor] = {}  # (device, *labels) -> text embeddings

    def use_clip(self, clip: object) -> None:
        super().use_clip(clip)
        self._texts = {}  # text embeddings belong to one model

    def fit(self, base: SplitData, val: SplitData | None) -> None:
        check_split_data(base, self.name)
        self.embed_dim = int(base.features.shape[1])
        self.fit_report = {"trained": False}

    def predict(self, episode: Episode) -> np.ndarray:
        check_episode(episode, self.name, self.embed_dim, self.zero_shot, self.few_shot)
        key = (str(self.device), *episode.label_names)
        if key not in self._texts:
            self._texts[key] = encode_text(clip_on(self.clip, self.device),
                                           [self.prompt.format(label=label) for label in episode.label_names])
        text = self._texts[key]
        if episode.query_features.shape[1] != text.shape[1]:
            raise MlfsicError(f"{self.name}: query_features have size {episode.query_features.shape[1]}, the text "
                              f"tower gives {text.shape[1]} (the features are not this model's image embeddings)")
        images = F.normalize(torch.as_tensor(episode.query_features, dtype=torch.float32, device=self.device), dim=-1)
        return (images @ text.T).double().cpu().numpy()
