"""The LCM study: Yan et al., "Modelling Multi-modal Cross-interaction for Multi-label Few-shot Image
Classification Based on Local Feature Selection", ACM TOMM 2024 (arXiv 2412.13732; the method: ``methods/lcm.py``).

What the benchmark asks of that paper beyond ranking its model (README.md of this folder says more):

* ``claims.py``: the abstract's claims as a table (``CLAIMS``), each tested by a paired bootstrap on the
  published ablation run (val split) and the published ranking run (novel split); ``mlfsic claims``.
* ``explain.py``: a fitted LCM-family method prepared as ``mlfsic run`` makes it, its episodes drawn, and the
  figure of one episode (the positions kept, each label's attention); ``mlfsic explain``.
* ``measures.py``: the kept-inside-box fraction and the attention transfer over many episodes;
  ``mlfsic explain measure=boxes|attention``.
* ``explain_figure.py``: the drawing of that figure, pure (arrays and image files in, a PIL image out).

The sweep presets of the study stay with the other presets, in ``configs/sweep/`` (``lcm_ablation.yaml``:
the ablation the claims read; ``lcm_val_grid.yaml``: how lcm's test-time adaptation was chosen).
"""
