"""Reading the two reviewed exclusion files of ``configs/teacher/``.

``concept_seen_exclusions.yaml`` and ``strict_exclusions.yaml`` map a COCO label to a list of entries
``"U+1F426 bird"``: a codepoint and its Unicode name in lower case, so a reviewer reads what is excluded
without a code chart. ``read_exclusion_file`` checks every entry and raises ``MlfsicError`` naming the file
and the entry for a malformed entry, a name that is not the codepoint's Unicode name (a typo in the
codepoint), an unknown label (not a drawable coco-moji category) or a repeated entry. Which labels must be
present, and what the concept-seen file must equal, is checked by ``regimes``.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

import yaml

from mlfsic.datasets.coco_moji.catalogue import GLYPHS
from mlfsic.datasets.openmoji_corpus.unicode_names import reviewed_name
from mlfsic.harness.errors import MlfsicError

CONCEPT_SEEN_FILE = "concept_seen_exclusions.yaml"
STRICT_FILE = "strict_exclusions.yaml"
_ENTRY = re.compile(r"U\+([0-9A-F]{4,6}) (\S.*)")


def default_exclusion_file(file_name: str) -> Path:
    """Path of a reviewed file shipped in ``mlfsic.configs`` (``configs/teacher/``)."""
    return Path(str(importlib.resources.files("mlfsic.configs") / "teacher" / file_name))


def parse_entry(entry: object, path: Path, label: str) -> int:
    """The codepoint of one ``"U+XXXX name"`` entry, checked against its Unicode name."""
    match = _ENTRY.fullmatch(entry) if isinstance(entry, str) else None
    if match is None:
        raise MlfsicError(f"exclusion file {path}: label {label!r} entry {entry!r} is not of the form 'U+1F426 bird'")
    codepoint = int(match.group(1), 16)
    expected = reviewed_name(codepoint)
    if expected is None or expected.lower() != match.group(2):
        raise MlfsicError(
            f"exclusion file {path}: label {label!r} entry {entry!r}: U+{codepoint:04X} is "
            + (f"named {expected.lower()!r}" if expected else "not a named Unicode 14.0 character")
        )
    return codepoint


def read_exclusion_file(path: Path) -> dict[str, tuple[int, ...]]:
    """{COCO label: codepoints, in file order} of a reviewed exclusion file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise MlfsicError(f"exclusion file not readable: {path} ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise MlfsicError(f"malformed exclusion file {path}: {error}") from None
    if not isinstance(raw, dict):
        raise MlfsicError(f"exclusion file {path} must map COCO labels to lists of 'U+XXXX name' entries")
    exclusions: dict[str, tuple[int, ...]] = {}
    for label, entries in raw.items():
        if label not in GLYPHS:
            raise MlfsicError(f"exclusion file {path}: unknown label {label!r} (not a drawable coco-moji category)")
        if not isinstance(entries, list):
            raise MlfsicError(f"exclusion file {path}: label {label!r} must have a list of entries ([] for none)")
        codepoints = tuple(parse_entry(entry, path, label) for entry in entries)
        if len(set(codepoints)) != len(codepoints):
            raise MlfsicError(f"exclusion file {path}: label {label!r} lists a codepoint twice")
        exclusions[label] = codepoints
    return exclusions
