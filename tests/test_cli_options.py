"""One CLI style: every ``key=value`` subcommand declares its options once (``harness.cli.options``) and one
parser reads them, so an unknown key, a bad value and ``--help`` read the same for each of them."""

from __future__ import annotations

import dataclasses
import doctest
import typing

import pytest

from mlfsic.harness.cli import main
from mlfsic.harness.cli import options as options_module
from mlfsic.harness.cli.options import (SCHEMAS, CorpusOptions, DataSplitOptions, ExplainOptions, MethodsOptions,
                                        default_text, option_fields, options_epilog, parse_key_values, type_name)
from mlfsic.harness.errors import MlfsicError

# (the subcommand's argv before its options, its name in messages, its schema, a known option, one misspelt,
#  an option that takes a typed value and a value of the wrong type)
COMMANDS = [
    (["leaderboard", "some_run"], "leaderboard", "publish", "pubish", "publish", "maybe"),
    (["claims"], "claims", "ablation", "ablations", None, None),
    (["methods"], "methods", "method_modules", "method_module", None, None),
    (["explain"], "explain", "n_images", "n_image", "seed", "x"),
    (["data", "prepare", "openmoji-corpus"], "data prepare openmoji-corpus", "n_images", "n_imgs", "image_size",
     "big"),
    (["data", "check", "imagefolder", "root=/nonexistent"], "data check", "max_shot", "max_shoot", "n_query",
     "four"),
    (["data", "split", "imagefolder", "root=/nonexistent"], "data split", "force", "forse", "force", "maybe"),
]


def test_every_key_value_subcommand_has_a_schema():
    assert {command[1] for command in COMMANDS} == set(SCHEMAS)


@pytest.mark.parametrize(("argv", "command", "known", "misspelt", "typed", "bad"), COMMANDS,
                         ids=[c[1] for c in COMMANDS])
def test_unknown_key_is_one_did_you_mean_line(argv, command, known, misspelt, typed, bad, capsys):
    assert main([*argv, f"{misspelt}=1"]) == 2
    err = capsys.readouterr().err
    own = ", ".join(f.name for f in option_fields(SCHEMAS[command]))
    assert err.count("\n") == 1, err
    assert err.startswith(f"mlfsic: error: unknown {command} option {misspelt!r} (did you mean {known}?); "
                          f"known: {own}"), err


@pytest.mark.parametrize(("argv", "command", "known", "misspelt", "typed", "bad"),
                         [c for c in COMMANDS if c[4] is not None], ids=[c[1] for c in COMMANDS if c[4] is not None])
def test_bad_value_is_one_line_naming_the_key_value_and_type(argv, command, known, misspelt, typed, bad, capsys):
    assert main([*argv, f"{typed}={bad}"]) == 2
    err = capsys.readouterr().err
    kind = typing.get_type_hints(SCHEMAS[command])[typed]
    expected = {int: "an integer", bool: "true or false"}[typing.get_args(kind)[0] if typing.get_args(kind) else kind]
    assert err == f"mlfsic: error: {command} option {typed}={bad!r}: expected {expected}\n"


@pytest.mark.parametrize("command", list(SCHEMAS))
def test_help_lists_every_option_with_its_type_and_default(command, capsys):
    argv = command.split()[:2] if command.startswith("data") else [command]
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    schema = SCHEMAS[command]
    hints = typing.get_type_hints(schema)
    for f in option_fields(schema):
        assert f.metadata.get("help"), f"{schema.__name__}.{f.name} has no help"
        assert f"  {f.name}={type_name(hints[f.name])} (default: {default_text(f)}" in text, f.name
        assert " ".join(f.metadata["help"].split()[:4]) in " ".join(text.split()), f.name


def test_an_option_without_help_cannot_be_listed():
    @dataclasses.dataclass(frozen=True)
    class Undocumented:
        key: int = 0

    with pytest.raises(TypeError, match="Undocumented.key has no field"):
        options_epilog(Undocumented)


def test_values_are_read_by_their_type():
    parsed, passed = parse_key_values("data split", DataSplitOptions,
                                      ["seed=3", "force=yes", "out=~/split.json", "root=/d", "n_query=2"],
                                      passes=lambda key: True)
    assert (parsed.seed, parsed.force, parsed.n_query, parsed.max_shot) == (3, True, 2, None)
    assert parsed.out is not None and "~" not in str(parsed.out) and passed == {"root": "/d"}
    for value in ("[a, b]", "a,b"):
        assert parse_key_values("methods", MethodsOptions, [f"method_modules={value}"])[0].method_modules == ["a", "b"]
    assert parse_key_values("methods", MethodsOptions, [])[0].method_modules == []
    with pytest.raises(MlfsicError, match=r"^explain option n_images='0': expected an integer >= 1$"):
        parse_key_values("explain", ExplainOptions, ["n_images=0"])
    with pytest.raises(MlfsicError, match=r"^explain option theta='high': expected a number$"):
        parse_key_values("explain", ExplainOptions, ["theta=high"])
    with pytest.raises(MlfsicError, match=r"^expected key=value, got 'seed'$"):
        parse_key_values("explain", ExplainOptions, ["seed"])


def test_explain_passes_dotted_and_plus_keys_on_as_run_config_overrides():
    from mlfsic.harness.cli.explain import parse_options

    parsed = parse_options(["seed=2", "dataset.generate.n_base=400", "+method_args.lcm.steps=20"])
    assert parsed.seed == 2 and parsed.overrides == ("dataset.generate.n_base=400", "+method_args.lcm.steps=20")
    assert "overrides" not in {f.name for f in option_fields(ExplainOptions)}


def test_corpus_defaults_are_the_pinned_teachers():
    from mlfsic.datasets.openmoji_corpus.regimes import REGIMES
    from mlfsic.harness.backbones.open_clip import TEACHER_DEFAULTS

    defaults = CorpusOptions()
    assert (defaults.regime, defaults.seed, defaults.n_images) == (
        TEACHER_DEFAULTS["regime"], TEACHER_DEFAULTS["corpus_seed"], TEACHER_DEFAULTS["corpus_images"])
    regime = next(f for f in dataclasses.fields(CorpusOptions) if f.name == "regime")
    assert tuple(regime.metadata["choices"]) == tuple(REGIMES)


def test_options_module_docstring_examples_hold():
    results = doctest.testmod(options_module)
    assert results.failed == 0 and results.attempted >= 5
