"""``mlfsic.results``: the reference runs shipped with the package, read as data (never imported code).

    published/             the default sweep's reference run (``against=published``; README's table)
    published_ablation/    the val-split ablation behind ``mlfsic claims``
    published_suites/      published suite members (``mlfsic leaderboard SUITE_DIR publish=true``)
    claims/                the claims table

In a checkout this folder is also the default ``results_dir`` (runs, caches, generated data), which git and
the wheel leave out. ``harness.sweep.spec.PUBLISHED_DIR`` finds ``published/`` through this package, so an
installed wheel has it too.
"""
