"""Keys that follow the code (issue 33; docs/architecture.md §3.1).

- A method's key covers the stripped source of its import closure: editing a helper lcm imports
  (torch_utils, protonet.sample_episode, lcm_adaptation) changes its key; rewording a docstring or a comment
  does not.
- The feature key (``backbone_id``) covers the preprocessing: images.py, the mean/std, the layer read; the
  ids of today's preprocessing are the ids before (the published run's id is what this code computes).
- The hand-bumped version constants are pinned to the stripped source they version.

Sources are edited through ``code_identity.module_source`` (what every key reads), never on disk.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mlfsic.harness import code_identity
from mlfsic.harness.backbones import extractor, kinds
from mlfsic.harness.sweep.evaluate import method_spec
from mlfsic.methods.api import Episode, Method, SplitData
from mlfsic.methods.registry import get_method_class

REPO = Path(__file__).resolve().parents[1]
READ = code_identity.module_source


def edited(monkeypatch, module: str, edit: Callable[[str], str]) -> None:
    """Every key now reads ``edit(source)`` for ``module`` (the file is untouched)."""
    original = READ(module)
    assert original is not None, module
    changed = edit(original)
    assert changed != original, f"the edit of {module} changed nothing"
    monkeypatch.setattr(code_identity, "module_source", lambda name: changed if name == module else READ(name))


def _function(text: str, name: str) -> ast.FunctionDef:
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    raise AssertionError(f"no function {name}")


def body_changed(name: str) -> Callable[[str], str]:
    """An edit adding a statement at the end of function ``name``'s body."""
    def edit(text: str) -> str:
        last = _function(text, name).body[-1]
        lines = text.split("\n")
        indent = lines[last.lineno - 1][: len(lines[last.lineno - 1]) - len(lines[last.lineno - 1].lstrip())]
        lines.insert(last.end_lineno, f"{indent}_edited = None")
        return "\n".join(lines)
    return edit


def reworded(text: str) -> str:
    """Every docstring reworded, comments and blank lines added: no statement changed."""
    tree = ast.parse(text)
    lines = text.split("\n")
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = node.body[0] if node.body else None
            if isinstance(docstring, ast.Expr) and isinstance(getattr(docstring, "value", None), ast.Constant):
                row = docstring.lineno - 1
                quote = '"""' if '"""' in lines[row] else '"'
                lines[row] = lines[row].replace(quote, quote + "Reworded, ", 1)
    out = []
    for line in lines:
        if line.startswith(("def ", "class ")):
            out += ["", "# a new comment", ""]
        if line.startswith("import ") or line.startswith("from "):
            line += "  # a trailing comment"
        out.append(line)
    return "\n".join(out) + "\n\n# the end\n"


# ----------------------------------------------------------------------------------------- stripping
def test_stripping_drops_docstrings_comments_and_blank_lines_only():
    text = 'd = """keep # this\n\n"""\n\n\ndef f(x):  # doubled\n    """Doc."""\n    return "#" + x\n'
    assert code_identity.stripped_source(text) == 'd = """keep # this\n\n"""\ndef f(x):\n    return "#" + x'
    same = '"""Module doc."""\n# comment\nd = """keep # this\n\n"""\ndef f(x):\n    \'\'\'Other.\'\'\'\n    return "#" + x'
    assert code_identity.source_sha256(same) == code_identity.source_sha256(text)
    # a blank line inside a string, a string's content and any statement count
    for other in (text.replace("this\n\n", "this\n"), text.replace('"#"', '"%"'), text.replace("return", "x = 1; return")):
        assert code_identity.source_sha256(other) != code_identity.source_sha256(text)


# ----------------------------------------------------------------------------------------- methods
def test_the_closure_of_lcm_holds_what_it_runs_and_no_harness_plumbing():
    code = code_identity.method_code(get_method_class("lcm"))
    for module in ("mlfsic.methods.lcm", "mlfsic.methods.torch_utils", "mlfsic.methods.protonet",
                   "mlfsic.methods.lcm_adaptation", "mlfsic.methods.api", "mlfsic.harness.protocol.metrics",
                   "mlfsic.harness.protocol.episodes", "mlfsic.harness.errors"):
        assert module in code, module
    assert "mlfsic.methods.registry" not in code  # name -> class lookup only
    assert not [m for m in code if m.startswith(("mlfsic.harness.sweep", "mlfsic.harness.backbones", "mlfsic.harness.cli"))]
    assert not [m for m in code if not m.startswith("mlfsic.")]  # torch, numpy: versions, not code


@pytest.mark.parametrize("module, function", [("mlfsic.methods.torch_utils", "numpy_rng"),
                                              ("mlfsic.methods.protonet", "sample_episode"),
                                              ("mlfsic.methods.lcm_adaptation", "adapt_to_supports")])
def test_editing_a_helper_lcm_imports_changes_its_key(monkeypatch, module, function):
    before = method_spec("lcm", {})
    protonet_before = method_spec("protonet", {})
    edited(monkeypatch, module, body_changed(function))
    after = method_spec("lcm", {})
    assert after.config_hash != before.config_hash and after.fit_hash != before.fit_hash
    if module == "mlfsic.methods.lcm_adaptation":  # protonet does not import it
        assert method_spec("protonet", {}).config_hash == protonet_before.config_hash


def test_rewording_docstrings_and_comments_keeps_the_key(monkeypatch):
    before = method_spec("lcm", {"selection": "exact"})
    edited(monkeypatch, "mlfsic.methods.lcm", reworded)
    assert method_spec("lcm", {"selection": "exact"}) == before


def test_a_statement_of_the_method_module_changes_its_key(monkeypatch):
    before = method_spec("protonet", {})
    edited(monkeypatch, "mlfsic.methods.protonet", lambda text: text + "\nEDITED = 1\n")
    assert method_spec("protonet", {}).config_hash != before.config_hash


class WithCodeModules(Method):
    """A method outside the package (this test module) naming one more module of its code."""

    code_modules = ("mlfsic.harness.sweep.store",)

    def fit(self, base: SplitData, val: SplitData | None) -> None:
        pass

    def predict(self, episode: Episode):
        raise NotImplementedError


def test_a_method_outside_the_package_hashes_its_module_its_mlfsic_imports_and_code_modules():
    code = code_identity.method_code(WithCodeModules)
    assert {__name__, "mlfsic.methods.api", "mlfsic.harness.sweep.store"} <= set(code)
    assert code[__name__] == code_identity.source_sha256(Path(__file__).read_text())


def test_a_plug_in_package_follows_its_own_modules():
    try:
        cls = get_method_class("example-cosine")
    except Exception:  # noqa: BLE001 - the example plug-in is on the tests' PYTHONPATH only (make test)
        pytest.skip("the example plug-in is not installed (.venv/test-plugins)")
    code = code_identity.method_code(cls)
    assert cls.__module__ in code and "mlfsic.methods.api" in code


# ----------------------------------------------------------------------------------------- features
def test_todays_preprocessing_keeps_the_ids_and_any_change_is_in_them(monkeypatch):
    for name, kind in kinds.KINDS.items():
        if name not in extractor.LEGACY_PREPROCESSING:  # a kind added since: its ids always carry it
            continue
        assert extractor.backbone_id_with_preprocessing(kind, "id") == "id", (
            f"{name}: its preprocessing is not LEGACY_PREPROCESSING's (the code that made every id before)")
    small_cnn, resnet50, open_clip = (kinds.KINDS[n] for n in ("small_cnn", "resnet50", "open_clip"))

    def ids() -> dict[str, str]:
        return {name: extractor.backbone_id_with_preprocessing(kind, "id") for name, kind in kinds.KINDS.items()
                if name in extractor.LEGACY_PREPROCESSING}

    images = "mlfsic.harness.backbones.images"
    with monkeypatch.context() as patch:  # decoding / resizing / normalising
        edited(patch, images, body_changed("to_tensor"))
        assert all(value != "id" for value in ids().values())
    with monkeypatch.context() as patch:  # the ImageNet mean/std the CNNs read
        edited(patch, images, lambda text: text.replace("IMAGENET_STD = (0.229,", "IMAGENET_STD = (0.230,"))
        assert ids()["small_cnn"] != "id" and ids()["resnet50"] != "id"
    with monkeypatch.context() as patch:  # open_clip's own mean/std: the other kinds keep their ids
        edited(patch, "mlfsic.harness.backbones.open_clip",
               lambda text: text.replace("CLIP_MEAN = (0.48145466,", "CLIP_MEAN = (0.5,"))
        now = ids()
        assert now["open_clip"] != "id" and now["small_cnn"] == now["resnet50"] == "id"
    with monkeypatch.context() as patch:  # the layer read
        edited(patch, "mlfsic.harness.backbones.resnet50", body_changed("forward_features"))
        assert ids()["resnet50"] != "id" and ids()["small_cnn"] == "id"
    with monkeypatch.context() as patch:  # how a batch is fed
        edited(patch, "mlfsic.harness.backbones.extractor", body_changed("load_images"))
        assert all(value != "id" for value in ids().values())
    with monkeypatch.context() as patch:  # documentation only
        edited(patch, images, reworded)
        assert set(ids().values()) == {"id"}
    edited(monkeypatch, "mlfsic.harness.backbones.small_cnn", body_changed("_build"))
    changed = extractor.backbone_id_with_preprocessing(small_cnn, "id")
    assert changed != "id" and changed != extractor.backbone_id_with_preprocessing(small_cnn, "other id")
    assert extractor.backbone_id_with_preprocessing(resnet50, "id") == "id" == \
        extractor.backbone_id_with_preprocessing(open_clip, "id")


def test_a_plug_in_kind_has_its_preprocessing_in_its_id():
    from test_layout import TOY_KIND  # noqa: PLC0415 - the toy kind of the layout tests

    identified = TOY_KIND.identify({}, None)
    assert extractor.backbone_id_with_preprocessing(TOY_KIND, identified) != identified
    code = code_identity.object_code(TOY_KIND.build)
    assert {"test_layout:_toy_build", "test_layout:MeanColour"} <= set(code)


def test_the_published_run_has_the_backbone_id_this_code_computes():
    """``against=published`` compares this id; a preprocessing change makes it differ: republish then."""
    info = json.loads((REPO / "results" / "published" / "run.json").read_text())
    backbone = info["backbone"]
    assert backbone["pinned"], "the published run is made on the pinned coco-moji backbone"
    ours = kinds.identify_backbone(info["config"]["dataset"]["backbone"], REPO / backbone["weights_file"])
    assert ours == backbone["id"], ("the backbone id differs from results/published's: the preprocessing or the "
                                    "weights changed since it was published; republish it (make publish)")


# ----------------------------------------------------------------------------------------- version pins
@pytest.mark.parametrize("constant", sorted(code_identity.VERSION_PINS))
def test_each_version_constant_is_pinned_to_the_source_it_versions(constant):
    pin = code_identity.VERSION_PINS[constant]
    version, source = pin.current()
    assert (version, source) == (pin.version, pin.source), (
        f"{pin.module}: the code {constant} versions ({', '.join(pin.roots)} and what they use) changed. If the "
        f"change alters {pin.meaning}, bump {constant}; then set its VersionPin in harness/code_identity.py to "
        f"version={version!r}, source={source!r}")


def test_a_sampler_edit_trips_its_pin_and_a_docstring_edit_does_not(monkeypatch):
    pin = code_identity.VERSION_PINS["SAMPLER_VERSION"]
    with monkeypatch.context() as patch:
        edited(patch, pin.module, reworded)
        assert pin.current() == (pin.version, pin.source)
    edited(monkeypatch, pin.module, body_changed("_draw_support"))  # reached from make_episode
    assert pin.current()[1] != pin.source
