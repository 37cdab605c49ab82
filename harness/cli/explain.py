"""``mlfsic explain``: where LCM looks in its support images, as one PNG, and two measures (the command).

LCM (Yan et al., "Modelling Multi-modal Cross-interaction for Multi-label Few-shot Image Classification
Based on Local Feature Selection", ACM TOMM 2024) keeps, per support image, the local positions whose
removal would change the cross-modal alignment loss (``methods/lcm.py``, docs/architecture.md §8), and
each label's word vector attends over the kept positions of every support image carrying the label.
This module shows both for one episode and measures whether the kept positions fall on the labelled
objects::

    mlfsic explain [method=lcm] [setting=1shot] [seed=0] [episode=0] [n_images=4] [split=val] [out=X.png]
    mlfsic explain measure=boxes [n_episodes=50] [split=val]
    mlfsic explain measure=attention [method=lcm] [n_episodes=50] [out=X.json]

Options (``key=value``; a key with a ``.`` or a leading ``+`` is passed to the run config as a Hydra
override, e.g. ``dataset.generate.n_base=400`` or ``+method_args.lcm.steps=20``):

* ``method``: an LCM-family method (``lcm``, ``wvga``, or a variant given with ``+variants.<name>...``);
  ``setting``: ``<K>shot`` with K >= 1; ``seed``: the method's seed and the episode set's seed;
  ``episode``: the episode index (episode i of seed s is episode i of the sweep's episode set for s).
* ``split``: ``val`` (default) or ``test``; ``test`` shows novel-split episodes and says so on stderr:
  choices (hyperparameters, ablations) must never be made on them.
* ``dataset``, ``results_dir``: as in ``mlfsic run``. The dataset, backbone and features are made or
  found as ``mlfsic run`` does (``harness.sweep.prepare.prepare_benchmark``), and the method is fitted through
  ``harness.sweep.evaluate.fit_method`` with the val split for model selection (``fit_val``), so it is the
  checkpoint a default run (or a ``fit_val`` ablation) makes and shares.
* ``theta``, ``threshold_mode``: applied to the fitted method before explaining (its training keeps the
  fitted config), to look at another selection rule of the same model.
* ``out`` (the figure; ``measure=attention``: its JSON, below): the PNG (default
  ``<results_dir>/explain/<method>-<dataset>-<split>-<setting>-seed<S>-ep<E>.png``); ``n_images``:
  support images shown (rows); ``max_labels``: label columns.
* ``measure=boxes``: ``kept_inside_box_fraction`` over ``n_episodes`` episodes instead of a figure.
* ``measure=attention``: ``attention_transfer`` over ``n_episodes`` episodes of the base split's labels
  (those the method was fitted on) and ``n_episodes`` of the val split's labels (never trained on; they
  served only the shipped fit's model selection), never the novel split: how label-specific the attention maps are and
  how much of their mass sits on the grid's border cells. A table on stdout and a JSON file (``out``, a
  ``.json`` path; default ``<results_dir>/explain/<method>-<dataset>-attention-<setting>-seed<S>
  -n<n_episodes>.json``). The episodes are the sweep's sampler's (``n_way``, ``n_query``); a base split
  too small for them can take ``++n_query=1`` (explaining reads only the support images).

The figure has one row per support image: the image, the positions LCM kept (dropped cells darkened;
the selection is per image, under the alignment loss of all the episode's labels), then per label the
image carries the head-averaged attention of the label's word vector over the grid (heat) with the
label's boxes (cyan) when the annotations have them.

This module is the command only: its options and what each ``measure`` prints. The study's code (the
prepared context, the measures, the figure) lives in ``mlfsic.studies.lcm_tomm2024`` (``studies/lcm_tomm2024/``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from mlfsic.harness.cli.options import ExplainOptions, parse_key_values
from mlfsic.harness.errors import MlfsicError
from mlfsic.studies.lcm_tomm2024.explain import prepare, write_figure
from mlfsic.studies.lcm_tomm2024.measures import (
    ATTENTION_SPLITS,
    attention_table,
    measure_attention,
    measure_boxes,
    write_attention,
)


# ------------------------------------------------------------------------------------------- options
def _is_override(key: str) -> bool:
    """A key with a ``.`` or a leading ``+`` is a run-config override, not an option of ``ExplainOptions``."""
    return "." in key or key.startswith("+")


def parse_options(options: Mapping[str, str] | Sequence[str]) -> ExplainOptions:
    """``key=value`` strings (or their dict) -> ExplainOptions (declared in ``harness.cli.options``, so
    ``mlfsic explain --help`` lists them); a key with a ``.`` or a leading ``+`` goes to ``overrides``, the run
    config's Hydra overrides; an unknown key or bad value is a one-line MlfsicError."""
    parsed, overrides = parse_key_values(
        "explain", ExplainOptions, dict(options) if isinstance(options, Mapping) else options, passes=_is_override,
        extra=" (and run-config overrides: a key with a '.' or a leading '+', e.g. +method_args.lcm.steps=20)")
    parsed = replace(parsed, overrides=tuple(f"{key}={value}" for key, value in overrides.items()))
    _check_options(parsed)
    return parsed


def _check_options(options: ExplainOptions) -> None:
    """What the types and ``metadata`` of ``ExplainOptions`` do not say (``parse_key_values`` checked those)."""
    from mlfsic.methods.lcm import THRESHOLD_MODES

    if options.threshold_mode is not None and options.threshold_mode not in THRESHOLD_MODES:
        raise MlfsicError(f"explain option threshold_mode={options.threshold_mode!r}: expected one of "
                          f"{', '.join(THRESHOLD_MODES)}")
    if options.measure == "attention" and options.split != "val":
        raise MlfsicError(f"explain option split={options.split!r}: measure=attention draws episodes of the "
                          f"{' and '.join(ATTENTION_SPLITS)} splits' labels (never test); leave split unset")
    out_suffix = ".json" if options.measure == "attention" else ".png"
    if options.out and Path(options.out).suffix.lower() != out_suffix:  # before minutes of preparation
        raise MlfsicError(f"explain option out={options.out!r}: expected a {out_suffix} path")
    if options.k_shot < 1:
        raise MlfsicError(f"explain option setting={options.setting!r}: LCM explains K-shot episodes, K >= 1")


# ------------------------------------------------------------------------------------------- command
def explain_command(options: Mapping[str, str] | Sequence[str]) -> int:
    """``mlfsic explain key=value ...``: write the PNG and print its path, or print the box measurement,
    or print the attention table and the path of its JSON."""
    parsed = parse_options(options)
    explained = prepare(parsed)
    if parsed.measure == "boxes":
        print(measure_boxes(explained, parsed).text())
        return 0
    if parsed.measure == "attention":
        results = measure_attention(explained, parsed)
        print(attention_table(results))
        print(write_attention(explained, parsed, results))
        return 0
    print(write_figure(explained, parsed))
    return 0
