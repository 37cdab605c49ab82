"""``mlfsic leaderboard DIR... [out=DIR] [against=published|RUN_DIR] [publish=true]``: the board and the site."""

from __future__ import annotations

import sys
from pathlib import Path

from mlfsic.harness.cli.options import LeaderboardOptions, parse_key_values
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.report.leaderboard import build_leaderboard, run_gaps_of
from mlfsic.harness.report.tables import gaps_summary, resume_text
from mlfsic.harness.report.site import build_site, default_site_dir, expand_dirs
from mlfsic.harness.sweep.against_run import publish
from mlfsic.harness.sweep.spec import PUBLISHED_DIR, resolve_against
from mlfsic.harness.sweep.load import load_sweep
from mlfsic.harness.sweep.store import is_suite_dir, read_suite_json, suite_run_dirs
from mlfsic.harness.sweep.suite import PUBLISHED_SUITES_DIR, publish_suite


def leaderboard_command(args: list[str]) -> int:
    """``mlfsic leaderboard DIR... [out=DIR] [against=published|RUN_DIR] [publish=true]`` (the options:
    ``options.LeaderboardOptions``).

    Each DIR is a run dir or a suite dir (its member runs). Writes leaderboard.{csv,md,html} of all the runs
    and the static site (``report.site``: index.html, benchmarks/, methods/, assets/) into out= (default: the
    first DIR when it is a run dir, ``<suite_dir>/site`` when it is a suite dir).
    ``against``: rank the runs together with a reference run, on their episode sets (harness.sweep.against_run).
    ``publish=true``: copy one finished run (default: the default sweep's) into out= (default: the
    repository's results/published) as the reference ``against=published`` reads, with leaderboard.{csv,md};
    a suite dir: every member into out=/<member> with its leaderboard.{csv,md} (default:
    results/published_suites/<suite>), the references
    ``mlfsic run +suite=<suite> against=published`` gives each member (``harness.sweep.suite``).
    A run that lacks cells (interrupted, failed) is said on stderr too: ``mlfsic: run <id>: INCOMPLETE ...;
    resume: <command>`` (the board lists its missing cells; ``missing_cells.csv``).
    """
    run_dirs = [Path(a) for a in args if "=" not in a]
    options, _ = parse_key_values("leaderboard", LeaderboardOptions, [a for a in args if "=" in a])
    if options.publish:
        if options.against is not None or len(run_dirs) > 1:
            raise MlfsicError("publish=true takes one RUN_DIR (default: the default sweep's) and no against=")
        if not run_dirs:
            run_dirs = [load_sweep([]).run_path]
        if is_suite_dir(run_dirs[0]):
            out = options.out or PUBLISHED_SUITES_DIR / read_suite_json(run_dirs[0])["suite"]
            written = publish_suite(run_dirs[0], out)
            for _, member_dir in suite_run_dirs(out):  # each member's board beside its copy, as a run's
                written += build_leaderboard([member_dir], member_dir, formats=("csv", "md")).values()
        else:
            out = options.out or Path(PUBLISHED_DIR)
            written = publish(run_dirs[0], out)
            paths = build_leaderboard([out], out, formats=("csv", "md"))
            print(Path(paths["md"]).read_text())
            written += paths.values()
        for path in written:
            print(path)
        return 0
    if not run_dirs:
        raise MlfsicError("give at least one run dir or suite dir")
    members = expand_dirs(run_dirs)  # a DIR that is neither: one line naming it
    out = options.out or default_site_dir(run_dirs)
    paths = build_leaderboard(members, out, against=resolve_against(options.against))
    site = build_site(run_dirs, out)
    print(Path(paths["md"]).read_text())
    for path in [*paths.values(), site["index.html"]]:
        print(path)
    for gaps in run_gaps_of(members):
        if gaps.incomplete:
            print(f"mlfsic: run {gaps.run_id}: {gaps_summary(gaps)}; resume: {resume_text(gaps)}", file=sys.stderr)
    return 0
