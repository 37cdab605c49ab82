"""The package's layout as a newcomer meets it (docs/architecture.md §2, §11).

- The import graph of the package (every ``import``, module level or inside a function) has no cycle
  other than ``methods.api <-> methods.registry`` (``register`` is the API's decorator).
- No folder holds more than 12 modules.
- Every registered backbone kind and dataset adapter satisfies its contract, and a toy kind / toy adapter
  added the documented way (one module + one table line, here ``register_kind`` / ``register_adapter``)
  runs through the harness.
- The doctest ``Example:`` blocks of the functional modules hold (run here, so ``make test`` runs them).
"""

from __future__ import annotations

import ast
import doctest
import importlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from mlfsic.datasets import registry
from mlfsic.harness.backbones import kinds
from mlfsic.harness.backbones.extractor import BackboneKind, Network, backbone_id
from mlfsic.harness.errors import MlfsicError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"harness": "mlfsic.harness", "methods": "mlfsic.methods", "datasets": "mlfsic.datasets",
            "configs": "mlfsic.configs", "studies": "mlfsic.studies"}
ALLOWED_CYCLES = [{"mlfsic.methods.api", "mlfsic.methods.registry"}]
DOCTEST_MODULES = ["mlfsic.harness.protocol.metrics", "mlfsic.harness.protocol.episodes",
                   "mlfsic.harness.report.intervals", "mlfsic.harness.errors", "mlfsic.harness.cli.options",
                   "mlfsic.harness.backbones.kinds", "mlfsic.methods.torch_utils",
                   "mlfsic.harness.code_identity"]


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (``from a import b`` counts ``a.b`` when that is a module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycle_but_the_method_api_and_its_registry():
    assert [c for c in cycles(import_graph()) if c not in ALLOWED_CYCLES] == []


def test_no_folder_holds_more_than_twelve_modules():
    for folder in PACKAGES:
        for directory in [REPO / folder, *(p for p in (REPO / folder).rglob("*") if p.is_dir())]:
            modules = list(directory.glob("*.py"))
            assert len(modules) <= 12, (directory, len(modules))


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_doctest_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


# ----------------------------------------------------------------------------------------- backbone kinds
@pytest.mark.parametrize("name", sorted(kinds.KINDS))
def test_every_backbone_kind_fulfils_the_contract(name):
    kind = kinds.backbone_kind(name)
    assert kind.name == name and isinstance(kind, BackboneKind)
    for hook in (kind.weights, kind.identify, kind.build, kind.check, kind.config_weights):
        assert callable(hook)


def test_an_unknown_kind_names_the_kinds_and_the_closest():
    with pytest.raises(MlfsicError, match=r"'small-cnn' is not one of .*did you mean small_cnn\?"):
        kinds.backbone_kind("small-cnn")
    with pytest.raises(MlfsicError, match="already registered"):
        kinds.register_kind(kinds.KINDS["resnet50"])


class MeanColour(torch.nn.Module):
    """A toy extractor: local = the 4x4 grid of mean colours (16, 3), global = their mean (3)."""

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grid = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(2).transpose(1, 2)
        return grid.mean(dim=1), grid


def _toy_build(config: Mapping[str, Any], weights: Path | None) -> Network:
    return Network(module=MeanColour(), weights=Path("/dev/null"), image_size=32, batch_size=64)


TOY_KIND = BackboneKind(
    name="toy_mean_colour", weights=lambda dataset, split, config, cache_root, progress=True: (None, {"kind": "toy"}),
    identify=lambda config, weights: backbone_id("toy_mean_colour", "no-weights", 32), build=_toy_build)


@pytest.fixture
def toy_kind():
    kinds.register_kind(TOY_KIND)
    yield TOY_KIND
    del kinds.KINDS[TOY_KIND.name]


def test_a_toy_backbone_kind_runs_a_cell_without_touching_the_harness(toy_kind, tmp_path):
    from mlfsic.harness.sweep.evaluate import evaluate_cell, method_spec
    from mlfsic.harness.sweep.load import load_sweep
    from mlfsic.harness.sweep.prepare import prepare_benchmark

    from conftest import tiny_overrides

    sweep = load_sweep(tiny_overrides(tmp_path, "dataset.backbone.kind=toy_mean_colour", "method=[protonet]",
                                      "setting=[1shot]", "seeds=[0]", "n_episodes=3"))
    benchmark = prepare_benchmark(sweep, progress=False)
    features, local = benchmark.features(benchmark.pool("test").image_ids[:5], with_local=True)
    assert features.shape == (5, 3) and local.shape == (5, 16, 3)
    from mlfsic.harness.protocol.data import split_pool
    from mlfsic.harness.protocol.episodes import materialise_episode_sets
    from mlfsic.harness.sweep.prepare import load_dataset_and_split

    dataset, split = load_dataset_and_split(sweep.dataset.as_dict(), progress=False)
    ref = materialise_episode_sets(split_pool(dataset, "test", split["test"]), sweep.episode_plan, sweep.results_dir)[0]
    spec = method_spec("protonet", sweep.methods["protonet"].config)
    records = evaluate_cell(benchmark, spec, 0, "1shot", str(ref.path), sweep.cache_root).records
    assert len(records) == 3 and records["map"].between(0, 1).all()


# ----------------------------------------------------------------------------------------- dataset adapters
@pytest.mark.parametrize("name", sorted(registry.ADAPTERS))
def test_every_adapter_reads_its_files(name):
    adapter = registry.adapter_module(name)
    assert callable(adapter.read)
    for optional in ("load", "label_split", "prepare", "check_files", "ensure_files"):
        assert callable(getattr(adapter, optional, len)), (name, optional)


def test_an_unknown_adapter_names_the_adapters_and_the_closest():
    with pytest.raises(MlfsicError, match=r"unknown dataset adapter 'cocoo'.*did you mean coco\?"):
        registry.adapter_module("cocoo")


TOY_ADAPTER = '''"""A toy adapter: a labels.json {file name: [labels]} beside the images."""
import json
from pathlib import Path

import numpy as np

from mlfsic.datasets.adapter import Loaded, root_of
from mlfsic.harness.protocol.data import Dataset


def read(cfg, check_images=True):
    root = root_of(cfg, "the folder holding labels.json")
    table = json.loads((root / "labels.json").read_text())
    names = tuple(sorted({label for labels in table.values() for label in labels}))
    files = tuple(sorted(table))
    targets = np.array([[name in table[f] for name in names] for f in files], dtype=bool)
    dataset = Dataset(str(cfg.get("name", "toy")), root, np.arange(len(files), dtype=np.int64), files, names,
                      targets, "toy-" + str(len(files)))
    return Loaded(dataset=dataset)
'''


def test_a_toy_adapter_needs_only_read(tmp_path, monkeypatch):
    (tmp_path / "toy_adapter_module.py").write_text(TOY_ADAPTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.ADAPTERS, "toy", "toy_adapter_module")
    with pytest.raises(MlfsicError, match="already registered"):
        registry.register_adapter("toy", "toy_adapter_module")
    root = tmp_path / "data"
    root.mkdir()
    labels = {f"{i}.png": (["cat"] if i % 2 else ["dog"]) + (["sofa"] if i % 3 == 0 else []) for i in range(12)}
    (root / "labels.json").write_text(json.dumps(labels))
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": ["cat"], "val": ["dog"], "test": ["sofa"]}))
    cfg = {"name": "toy", "adapter": "toy", "root": str(root), "split_file": str(split_file)}
    dataset = registry.load_dataset(cfg)
    assert dataset.label_names == ("cat", "dog", "sofa") and len(dataset.image_ids) == 12
    assert registry.label_split(cfg, dataset) == {"base": ["cat"], "val": ["dog"], "test": ["sofa"]}
