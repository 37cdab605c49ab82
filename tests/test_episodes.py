"""Episode samplers and episode-set files, checked by an independent checker.

The checker below reads an episode set (a file or its dict) plus a pool and re-derives every protocol
property with plain Python sets, without calling the sampler's helpers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlfsic.harness.protocol.data import LabelledPool
from mlfsic.harness.errors import MlfsicError
from mlfsic.harness.protocol.episodes import (
    SamplerParams,
    build_episode_set,
    check_pool_matches,
    episode_seed,
    episode_seed_sequence,
    episode_targets,
    load_episode_set,
    make_episode,
    save_episode_set,
)

TESTS_DIR = Path(__file__).resolve().parent


def make_pool(n_images: int = 2000, n_labels: int = 16, seed: int = 0, split: str = "test") -> LabelledPool:
    """A synthetic pool with a COCO-like label distribution: Zipf-ish label frequencies, 1-4 labels/image."""
    rng = np.random.default_rng(seed)
    freq = 1.0 / (np.arange(n_labels) + 1.0) ** 0.8
    freq /= freq.sum()
    targets = np.zeros((n_images, n_labels), dtype=bool)
    for i in range(n_images):
        k = min(1 + rng.poisson(0.7), 4)
        targets[i, rng.choice(n_labels, size=k, replace=False, p=freq)] = True
    image_ids = rng.permutation(np.arange(n_images, dtype=np.int64) * 7 + 100_000)  # unsorted, sparse ids
    return LabelledPool(dataset="synthetic", split=split, label_names=tuple(f"label_{j:02d}" for j in range(n_labels)),
                        image_ids=image_ids, targets=targets, annotation_sha256="ab" * 32)


@pytest.fixture(scope="module")
def pool() -> LabelledPool:
    return make_pool()


# ----------------------------------------------------------------------------------------- checker
def labels_of(pool: LabelledPool) -> dict[int, set[str]]:
    return {int(i): {pool.label_names[j] for j in range(len(pool.label_names)) if pool.targets[r, j]}
            for r, i in enumerate(pool.image_ids)}


def check_episode_set(content: dict, pool: LabelledPool, protocol: str, k_shot: int, n_query: int,
                      n_episodes: int, seed: int, n_way: int | None) -> None:
    """Independent re-check of docs/architecture.md §5.3 from the stored ids and the pool."""
    image_labels = labels_of(pool)
    assert content["protocol"] == protocol
    assert content["annotation_sha256"] == pool.annotation_sha256
    assert content["label_names"] == list(pool.label_names)
    assert content["params"] == {"dataset": pool.dataset, "split": pool.split, "n_way": n_way, "k_shot": k_shot,
                                 "n_query": n_query, "n_episodes": n_episodes, "seed": seed}
    assert len(content["episodes"]) == n_episodes
    for episode in content["episodes"]:
        labels = episode["labels"]
        expected_n = len(pool.label_names) if n_way is None else n_way
        assert len(labels) == len(set(labels)) == expected_n
        positions = [pool.label_names.index(name) for name in labels]
        assert positions == sorted(positions)  # pool column order
        support, query = episode["support"], episode["query"]
        assert all(isinstance(i, int) for i in support + query)
        assert len(set(support)) == len(support) and len(set(query)) == len(query)
        assert set(support) <= set(image_labels) and set(query) <= set(image_labels)
        assert not set(support) & set(query)
        if k_shot == 0:
            assert support == []
        for name in labels:
            assert sum(name in image_labels[i] for i in support) >= k_shot, name
            assert sum(name in image_labels[i] for i in query) >= n_query, name
        if protocol == "release":  # exactly K distinct support images drawn per label: N x K in all
            assert len(support) == k_shot * len(labels)
        if protocol in ("release", "episodic-v1"):
            assert len(query) <= n_query * len(labels)
            # every query image carries an episode label (it was drawn for one)
            assert all(image_labels[i] & set(labels) for i in query)
        else:
            assert set(query) == set(image_labels) - set(support)


# ----------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("k_shot", [0, 1, 5])
def test_release_rule_properties(pool, k_shot):
    content = build_episode_set(pool, "release", k_shot, 4, 100, seed=3)
    check_episode_set(content, pool, "release", k_shot, 4, 100, 3, None)
    content = build_episode_set(pool, "release", k_shot, 4, 30, seed=3, n_way=5)
    check_episode_set(content, pool, "release", k_shot, 4, 30, 3, 5)


def test_release_rule_holds_more_support_than_episodic_v1_and_has_its_own_ids(pool):
    release = build_episode_set(pool, "release", 5, 4, 50, seed=1)
    episodic = build_episode_set(pool, "episodic-v1", 5, 4, 50, seed=1)
    assert release["episode_set_id"] != episodic["episode_set_id"]
    sizes = [len(e["support"]) for e in release["episodes"]]
    assert set(sizes) == {5 * 16}
    # episodic-v1 skips labels that co-occurring images already cover, so it draws fewer images
    assert np.mean([len(e["support"]) for e in episodic["episodes"]]) < 5 * 16


def test_release_rule_names_the_label_that_runs_out():
    """'c' has 4 images, all also carried by 'a' or 'b': after a and b drew theirs, c may have < K left."""
    targets = np.zeros((14, 3), dtype=bool)
    targets[0:7, 0] = True  # a: images 0-6
    targets[7:14, 1] = True  # b: images 7-13
    targets[[0, 1, 7, 8], 2] = True  # c: images 0, 1, 7, 8
    tiny = LabelledPool("tiny", "test", ("a", "b", "c"), np.arange(14, dtype=np.int64), targets, "0" * 64)
    with pytest.raises(MlfsicError, match=r"label 'c' .* has 4 images but only [0-2] outside the support .* "
                                          r"k_shot=3 needed by the release rule"):
        build_episode_set(tiny, "release", 3, 1, 200, seed=0)


@pytest.mark.parametrize("k_shot", [0, 1, 5])
def test_episodic_v1_properties(pool, k_shot):
    content = build_episode_set(pool, "episodic-v1", k_shot, 4, 100, seed=3)
    check_episode_set(content, pool, "episodic-v1", k_shot, 4, 100, 3, None)


def test_support_is_near_k(pool):
    """Skipping covered labels keeps the support small: at most K per label, usually fewer in total."""
    content = build_episode_set(pool, "episodic-v1", 1, 4, 50, seed=0)
    sizes = [len(e["support"]) for e in content["episodes"]]
    assert max(sizes) <= 16 and np.mean(sizes) < 16


def test_n_way_subsets(pool):
    content = build_episode_set(pool, "episodic-v1", 5, 4, 60, seed=1, n_way=5)
    check_episode_set(content, pool, "episodic-v1", 5, 4, 60, 1, 5)
    assert len({tuple(e["labels"]) for e in content["episodes"]}) > 1
    all_labels = build_episode_set(pool, "episodic-v1", 5, 4, 5, seed=1, n_way=16)  # n_way == N means all
    assert all_labels["params"]["n_way"] is None
    assert all_labels["episode_set_id"] == build_episode_set(pool, "episodic-v1", 5, 4, 5, seed=1)["episode_set_id"]


def test_rest_of_pool_coverage(pool):
    content = build_episode_set(pool, "rest-of-pool", 5, 4, 10, seed=0)
    check_episode_set(content, pool, "rest-of-pool", 5, 4, 10, 0, None)
    assert len({tuple(sorted(e["support"])) for e in content["episodes"]}) == 10  # 10 distinct draws


def test_seed_sequence_children_match_spawn():
    children = np.random.SeedSequence(11).spawn(600)
    for index in (0, 9, 599):
        assert np.array_equal(episode_seed_sequence(11, index).generate_state(4), children[index].generate_state(4))


def test_prefix_stability_and_order_independence(pool):
    long = build_episode_set(pool, "episodic-v1", 1, 4, 600, seed=5)
    short = build_episode_set(pool, "episodic-v1", 1, 4, 10, seed=5)
    assert long["episodes"][:10] == short["episodes"]
    params = SamplerParams("episodic-v1", k_shot=1, n_query=4)
    for index in (599, 42, 0):  # any order, one at a time, as a worker would
        assert make_episode(pool, params, 5, index) == long["episodes"][index]
    other_seed = build_episode_set(pool, "episodic-v1", 1, 4, 10, seed=6)
    assert other_seed["episodes"] != short["episodes"] and other_seed["episode_set_id"] != short["episode_set_id"]


def test_episode_seed_stable_and_distinct():
    seeds = [episode_seed(0, i) for i in range(100)]
    assert seeds == [episode_seed(0, i) for i in range(100)]
    assert len(set(seeds)) == 100 and all(0 <= s < 2**32 for s in seeds)
    assert episode_seed(1, 0) != episode_seed(0, 0)


def test_determinism_across_processes(pool):
    content = build_episode_set(pool, "episodic-v1", 5, 4, 30, seed=2)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_episodes import make_pool; from mlfsic.harness.protocol.episodes import build_episode_set;"
        "print(build_episode_set(make_pool(), 'episodic-v1', 5, 4, 30, 2)['episode_set_id'])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code, str(TESTS_DIR)], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == content["episode_set_id"]


def test_content_id_is_sha256_of_canonical_json(pool):
    import hashlib

    content = build_episode_set(pool, "episodic-v1", 1, 4, 3, seed=0)
    rest = {k: v for k, v in content.items() if k != "episode_set_id"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert content["episode_set_id"] == hashlib.sha256(text.encode()).hexdigest()


# ----------------------------------------------------------------------------------------- targets
def test_episode_targets_match_independent_lookup(pool):
    content = build_episode_set(pool, "episodic-v1", 5, 4, 5, seed=0, n_way=6)
    image_labels = labels_of(pool)
    for episode in content["episodes"]:
        support_t, query_t = episode_targets(pool, episode)
        assert support_t.dtype == np.float32 and query_t.dtype == np.float32
        for ids, got in ((episode["support"], support_t), (episode["query"], query_t)):
            want = np.array([[name in image_labels[i] for name in episode["labels"]] for i in ids], dtype=np.float32)
            assert np.array_equal(got, want.reshape(len(ids), len(episode["labels"])))
    zero = build_episode_set(pool, "episodic-v1", 0, 4, 1, seed=0)["episodes"][0]
    assert episode_targets(pool, zero)[0].shape == (0, 16)


def test_check_pool_matches(pool):
    content = build_episode_set(pool, "episodic-v1", 1, 4, 2, seed=0)
    check_pool_matches(content, pool)
    other = LabelledPool(pool.dataset, pool.split, pool.label_names, pool.image_ids, pool.targets, "cd" * 32)
    with pytest.raises(MlfsicError, match="annotations"):
        check_pool_matches(content, other)


# ----------------------------------------------------------------------------------------- files
def test_save_load_roundtrip_and_reuse(pool, tmp_path):
    content = build_episode_set(pool, "episodic-v1", 1, 4, 20, seed=0)
    path = save_episode_set(content, tmp_path)
    assert path == tmp_path / "episodes" / f"{content['episode_set_id']}.json"
    assert load_episode_set(path) == content
    check_episode_set(json.loads(path.read_text()), pool, "episodic-v1", 1, 4, 20, 0, None)
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))  # make a rewrite visible even on coarse clocks
    stamped = path.stat().st_mtime_ns
    assert save_episode_set(build_episode_set(pool, "episodic-v1", 1, 4, 20, seed=0), tmp_path) == path
    assert path.stat().st_mtime_ns == stamped
    assert sorted(p.name for p in (tmp_path / "episodes").iterdir()) == [path.name]  # no temp files left


def test_tampered_file_is_rejected(pool, tmp_path):
    content = build_episode_set(pool, "episodic-v1", 1, 4, 5, seed=0)
    path = save_episode_set(content, tmp_path)
    data = json.loads(path.read_text())
    data["episodes"][3]["query"][0] = data["episodes"][3]["support"][0]
    path.write_text(json.dumps(data))
    with pytest.raises(MlfsicError, match=str(path.name)):
        load_episode_set(path)
    assert save_episode_set(content, tmp_path) == path  # a damaged file is rewritten
    assert load_episode_set(path) == content


def test_modified_dict_is_not_saved(pool, tmp_path):
    content = build_episode_set(pool, "episodic-v1", 1, 4, 2, seed=0)
    content["episodes"][0]["support"] = []
    with pytest.raises(MlfsicError, match="does not match"):
        save_episode_set(content, tmp_path)


def test_unreadable_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(MlfsicError, match="broken.json"):
        load_episode_set(bad)
    with pytest.raises(MlfsicError, match="missing.json"):
        load_episode_set(tmp_path / "missing.json")
    bad.write_text(json.dumps({"protocol": "episodic-v1"}))
    with pytest.raises(MlfsicError, match="missing field"):
        load_episode_set(bad)


# ----------------------------------------------------------------------------------------- bad input
def test_too_few_images_names_label_and_counts(pool):
    rare = pool.label_names[int(pool.targets.sum(axis=0).argmin())]
    count = int(pool.targets.sum(axis=0).min())
    n_query = count - 4  # only the rarest label falls short, by one
    with pytest.raises(MlfsicError, match=rf"label '{rare}' .* has {count} images.*k_shot=5 \+ n_query={n_query} = {count + 1}"):
        build_episode_set(pool, "episodic-v1", 5, n_query, 1, seed=0)


def test_bad_parameters(pool):
    with pytest.raises(MlfsicError, match="n_way=17 is larger than the 16 labels"):
        build_episode_set(pool, "episodic-v1", 1, 4, 1, seed=0, n_way=17)
    with pytest.raises(MlfsicError, match="unknown episode protocol 'laso'"):
        build_episode_set(pool, "laso", 1, 4, 1, seed=0)
    with pytest.raises(MlfsicError, match="k_shot"):
        build_episode_set(pool, "episodic-v1", -1, 4, 1, seed=0)
    with pytest.raises(MlfsicError, match="n_query"):
        build_episode_set(pool, "episodic-v1", 1, 0, 1, seed=0)
    with pytest.raises(MlfsicError, match="n_episodes"):
        build_episode_set(pool, "episodic-v1", 1, 4, 0, seed=0)


def test_unknown_label_and_image_in_targets(pool):
    episode = build_episode_set(pool, "episodic-v1", 1, 4, 1, seed=0)["episodes"][0]
    with pytest.raises(MlfsicError, match="episode label 'zebra'"):
        episode_targets(pool, {**episode, "labels": ["zebra"]})
    with pytest.raises(MlfsicError, match="query image 5 is not in pool"):
        episode_targets(pool, {**episode, "query": [5]})


def test_co_occurrence_exhaustion_names_label():
    """'c' has exactly K + Q images, but supports drawn for 'a' and 'b' can take its images."""
    targets = np.zeros((12, 3), dtype=bool)
    targets[0:6, 0] = True  # a: images 0-5
    targets[6:12, 1] = True  # b: images 6-11
    targets[[0, 1, 2, 6, 7, 8], 2] = True  # c: images 0-2 and 6-8
    tiny = LabelledPool("tiny", "test", ("a", "b", "c"), np.arange(12, dtype=np.int64), targets, "0" * 64)
    with pytest.raises(MlfsicError, match=r"label '.' .* has 6 images but only \d outside the support"):
        build_episode_set(tiny, "episodic-v1", 2, 4, 200, seed=0)
