"""README's leaderboards are the committed published runs, cell by cell: the default run
(results/published/leaderboard.csv) between the ``leaderboard`` markers, the pretrained suite's member
(results/published_suites/coco-moji-pretrained/efficientnet-lite0/leaderboard.csv) between the
``leaderboard-pretrained`` markers.

When a change moves a published number, regenerate the run (``make run``, ``make publish``; the pretrained one:
README "A pretrained ImageNet backbone") and paste the table this test prints on failure between the markers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- leaderboard:start -->", "<!-- leaderboard:end -->"
PRETRAINED = REPO / "results/published_suites/coco-moji-pretrained/efficientnet-lite0"
PRETRAINED_START, PRETRAINED_END = "<!-- leaderboard-pretrained:start -->", "<!-- leaderboard-pretrained:end -->"


def published_table(run_dir: Path = REPO / "results/published") -> str:
    """method x setting: mAP ± half-width (percent), `*` significantly below the cell's best, bold best."""
    board = pd.read_csv(run_dir / "leaderboard.csv")
    board = board[board["kind"] == "ours"]
    board = board.assign(shots=board["setting"].map(lambda s: int(s.removesuffix("shot")))).sort_values(["shots", "rank"])
    settings = list(board["setting"].drop_duplicates())
    methods = list(board["method"].drop_duplicates())  # in rank order of the first setting each appears in
    lines = ["| method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for method in methods:
        cells = []
        for setting in settings:
            row = board[(board["method"] == method) & (board["setting"] == setting)]
            if row.empty:
                cells.append("-")
                continue
            row = row.iloc[0]
            text = f"{100 * row['map']:.1f} ± {100 * row['map_ci95']:.1f}"
            if int(row["rank"]) == 1 and row["mark"] != "=":
                text = f"**{text}**"
            elif row["mark"] == "*":
                text += " *"
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_readme_leaderboard_is_the_published_run():
    readme = (REPO / "README.md").read_text()
    assert START in readme and END in readme, "README lacks the leaderboard markers"
    block = readme.split(START, 1)[1].split(END, 1)[0].strip()
    expected = published_table()
    assert block == expected, f"README leaderboard differs from results/published; paste:\n{expected}"


def test_readme_pretrained_leaderboard_is_the_published_pretrained_run():
    readme = (REPO / "README.md").read_text()
    assert PRETRAINED_START in readme and PRETRAINED_END in readme, "README lacks the pretrained leaderboard markers"
    block = readme.split(PRETRAINED_START, 1)[1].split(PRETRAINED_END, 1)[0].strip()
    expected = published_table(PRETRAINED)
    assert block == expected, f"README pretrained leaderboard differs from {PRETRAINED}; paste:\n{expected}"
