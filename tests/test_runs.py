"""Run cache and executors (fedgrad_core.runs, integrations.ray_executor)."""

from __future__ import annotations

import importlib.util
import json

from pathlib import Path

import pytest

import fedgrad_core
from fedgrad_core import ExperimentConfig, cache, runs
from fedgrad_core.results import RunResult

# A tiny digits run: a few seconds, no downloads.
TINY = ExperimentConfig(
    dataset="digits", num_clients=8, clients_per_round=4, rounds=2, local_epochs=1, pretrain_epochs=1,
    attack="blackbox", defense="fedavg",
)


def timeless(history):
    """The history without wall-clock timings (the only part of a run that is not a function of its config)."""
    if isinstance(history, dict):
        return {k: timeless(v) for k, v in history.items() if not k.endswith("seconds")}
    if isinstance(history, list):
        return [timeless(v) for v in history]
    return history


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of the simulation behind run_cached (results are real runs)."""
    from fedgrad_core import simulation

    calls = []
    real = simulation.run_experiment

    def spy(config, **kwargs):
        calls.append(config)
        return real(config, **kwargs)

    monkeypatch.setattr(simulation, "run_experiment", spy)
    return calls


def test_key_depends_on_every_field_and_the_version(monkeypatch):
    base = runs.config_key(TINY)
    assert runs.config_key(TINY.replace()) == base  # equal configs, equal keys
    assert runs.config_key(TINY.replace(lr=0.021)) != base
    assert runs.config_key(TINY.replace(defense_params={"switch_round": 3})) != base
    assert runs.config_key(TINY.replace(seed=1)) != base
    monkeypatch.setattr(fedgrad_core, "__version__", "9.9.9")
    assert runs.config_key(TINY) != base


def test_key_depends_on_the_code(monkeypatch):
    # A local edit of the package changes the fingerprint: runs of the old code are not served.
    base = runs.config_key(TINY)
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "0123456789abcdef")
    assert runs.config_key(TINY) != base


def test_code_fingerprint_hashes_the_package_sources(tmp_path, monkeypatch):
    from fedgrad_core import results

    fingerprint = results.code_fingerprint()
    assert len(fingerprint) == 16 and fingerprint == results.code_fingerprint()
    # the same hash over a copy of the sources, then over the copy with one byte changed
    package = Path(results.__file__).resolve().parent
    copy = tmp_path / "fedgrad_core"
    for path in package.rglob("*.py"):
        target = copy / path.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    monkeypatch.setattr(results, "__file__", str(copy / "results.py"))
    results.code_fingerprint.cache_clear()
    try:
        assert results.code_fingerprint() == fingerprint
        (copy / "runs.py").write_bytes((copy / "runs.py").read_bytes() + b"# edited\n")
        results.code_fingerprint.cache_clear()
        assert results.code_fingerprint() != fingerprint
    finally:
        results.code_fingerprint.cache_clear()


def test_runs_dir_prefers_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGRAD_CACHE", str(tmp_path / "c"))
    assert runs.runs_dir() == tmp_path / "c" / "runs"
    assert runs.runs_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("FEDGRAD_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # one root for runs and pretrained models (cache.root)
    assert runs.runs_dir() == tmp_path / "home" / ".cache" / "fedgrad" / "cache" / "runs" == cache.root() / "runs"


@pytest.mark.slow
def test_cache_hit_returns_identical_result_without_rerunning(tmp_path, counted):
    first = runs.run_cached(TINY, cache_dir=tmp_path)
    path = runs.cache_path(TINY, tmp_path)
    mtime = path.stat().st_mtime_ns

    again = runs.run_cached(TINY, cache_dir=tmp_path)

    assert len(counted) == 1  # ran once
    assert path.stat().st_mtime_ns == mtime  # file not rewritten
    assert again.history == first.history and again.meta == first.meta
    assert again.config == TINY
    assert json.loads(path.read_text())["config"] == TINY.to_dict()


@pytest.mark.slow
def test_changed_parameter_reruns_only_that_run(tmp_path, counted):
    runs.run_cached(TINY, cache_dir=tmp_path)
    changed = TINY.replace(lr=0.03)

    results = runs.run_many([TINY, changed, TINY], executor="sequential", cache_dir=tmp_path, progress=False)

    assert counted == [TINY, changed]  # TINY from the cache, the duplicate not run twice
    assert results[0].history == results[2].history
    assert results[1].config.lr == 0.03
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_damaged_or_foreign_cache_file_is_not_trusted(tmp_path):
    path = runs.cache_path(TINY, tmp_path)
    path.write_text("{not json")
    assert runs.load_cached(TINY, tmp_path) is None
    RunResult(TINY.replace(seed=5), [{"round": 1}], {}).save(path)  # right name, other config
    assert runs.load_cached(TINY, tmp_path) is None


def test_threads_per_worker_never_oversubscribes():
    assert runs.threads_per_worker(1, cores=2) == 2
    assert runs.threads_per_worker(2, cores=2) == 1
    assert runs.threads_per_worker(3, cores=2) == 1
    assert runs.threads_per_worker(2, cores=16) == 8


def test_pretrain_group_shares_the_pretrained_model_across_defenses():
    mnist = ExperimentConfig(dataset="mnist", attack="blackbox", defense="fedavg")
    assert runs.pretrain_group(mnist) == runs.pretrain_group(mnist.replace(defense="krum", attack="pgd"))
    assert runs.pretrain_group(mnist) != runs.pretrain_group(mnist.replace(seed=1))
    # digits' tail edge-case set removes examples from the training set: the attack matters there
    assert runs.pretrain_group(TINY) != runs.pretrain_group(TINY.replace(attack="pixel_trigger"))


def test_run_many_rejects_bad_arguments_before_running(tmp_path):
    with pytest.raises(ValueError, match="unknown executor 'threads'"):
        runs.run_many([TINY], executor="threads", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        runs.run_many([TINY], workers=0, cache_dir=tmp_path)
    with pytest.raises(fedgrad_core.ConfigError, match="unknown defense"):
        runs.run_many([TINY, TINY.replace(defense="nope")], cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.json"))  # nothing ran


@pytest.mark.slow
def test_local_processes_equal_sequential(tmp_path):
    configs = [TINY, TINY.replace(seed=1), TINY.replace(defense="fedgrad", defense_params={"switch_round": 1})]

    parallel = runs.run_many(configs, executor="local", workers=2, cache_dir=tmp_path / "p", progress=False)
    # the same torch thread count per run as the two workers had (1 each on 2 cores)
    sequential = runs.run_many(
        configs, executor="sequential", threads=runs.threads_per_worker(2), cache_dir=tmp_path / "s", progress=False
    )

    assert [r.config for r in parallel] == configs
    for p, s in zip(parallel, sequential):
        assert timeless(p.history) == timeless(s.history)
    names = sorted(f.name for f in (tmp_path / "p").glob("*.json"))
    assert names == sorted(f.name for f in (tmp_path / "s").glob("*.json"))
    assert parallel[0].meta["cpu_threads"] == runs.threads_per_worker(2)


@pytest.mark.slow
def test_ray_executor_equals_sequential(tmp_path):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (optional extra: pip install 'fedgrad-core[ray]')")
    import ray

    configs = [TINY, TINY.replace(seed=1)]
    try:
        got = runs.run_many(
            configs, executor="ray", threads=1, cache_dir=tmp_path / "r", progress=False,
            init_kwargs={"num_cpus": 2, "include_dashboard": False},
        )
    finally:
        ray.shutdown()
    want = runs.run_many(configs, executor="sequential", threads=1, cache_dir=tmp_path / "s", progress=False)
    assert [timeless(r.history) for r in got] == [timeless(r.history) for r in want]
    assert len(list((tmp_path / "r").glob("*.json"))) == 2


def test_save_tidy_writes_rows_with_config_and_provenance(tmp_path):
    history = [
        {"round": 1, "main_acc": 0.5, "backdoor_acc": 0.25, "tpr": None, "fpr": 0.0, "aggregation_seconds": 0.1},
        {"round": 2, "main_acc": 0.75, "backdoor_acc": 0.5, "tpr": 1.0, "fpr": 0.5, "aggregation_seconds": 0.2},
    ]
    meta = {"data_source": "scikit-learn load_digits", "hardware": "cpu x", "device": "cpu", "git_commit": "abc"}
    runs_by_label = {
        "fedavg": [RunResult(TINY, history, meta), RunResult(TINY.replace(seed=1), history[:1], meta)],
        "fedgrad": [RunResult(TINY.replace(defense="fedgrad"), history, meta)],
    }

    csv_path, json_path = runs.save_tidy(
        runs_by_label, tmp_path, "t", profile="smoke", facets={"fedgrad": {"variant": "full"}}
    )

    import pandas as pd

    table = pd.read_csv(csv_path)
    assert len(table) == 2 + 1 + 2
    assert set(table.columns) >= {"label", "seed", "round", "dataset", "model", "profile", "data_source", "commit"}
    assert table.loc[table.label == "fedavg", "seed"].tolist() == [0, 0, 1]
    assert table["model"].unique().tolist() == ["digits_mlp"]
    assert table.loc[table.label == "fedgrad", "variant"].tolist() == ["full", "full"]
    record = json.loads(json_path.read_text())
    assert record["profile"] == "smoke"
    assert record["labels"]["fedavg"]["runs"][1]["config"]["seed"] == 1
    assert record["labels"]["fedgrad"]["runs"][0]["cache_key"] == runs.config_key(TINY.replace(defense="fedgrad"))
