"""Studies (docs/architecture.md §2, §8): the code of one paper's questions, kept apart from the generic harness.

A study reads run directories and fitted methods through the harness (``harness.sweep``, ``harness.report``)
and adds what only its paper asks: its claims as tests, its diagnostics, its figures. One sub-package per
study, named for the paper; the harness's commands that serve a study (``mlfsic claims``, ``mlfsic explain``)
are thin wrappers in ``harness/cli``.
"""
