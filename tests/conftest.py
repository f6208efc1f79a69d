"""Fixtures and pytest hooks: the session's token cache, tiny configs, the schedule registry kept,
the host-sync detector, a synthetic sweep, and the order of the slow tests. Shared helper functions are in helpers.py."""

from __future__ import annotations

import gc
import os
import sys

import pytest

from helpers import ROOT, nested, tiny_overrides, write_job
from minigpt.config import config_from_dict

# Under pytest-xdist (the README's `-n auto`) each core runs a worker; a worker and the train.py
# processes its tests start use one thread each, so two workers do not fight over two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# Over a minute each on 2 cores: started first, one per worker.
LONGEST = ("test_headline_cut_shows_the_pre_ln_lasting_gap_on_every_seed", "test_dry_run_executes_every_stage_on_the_cpu")


def pytest_collection_modifyitems(config, items):
    """The longest tests first, then the other slow ones, then the rest, dealt out in turn to the
    workers: pytest-xdist's work stealing hands each worker one contiguous part of this order, so
    each part starts with its share of the long tests instead of one worker getting them all."""
    ranked = sorted(items, key=lambda item: 0 if item.name in LONGEST else 1 if item.get_closest_marker("slow") else 2)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    items[:] = [item for k in range(workers) for item in ranked[k::workers]]


# What tools leave in the checkout while the tests run; anything else new there after the session
# was written by a test (a default `multirun/` or `outputs/` in the working directory) and fails it,
# so that a fresh clone stays as it was.
LEFT_BY_TOOLS = {"__pycache__", ".pytest_cache", ".ruff_cache"}


@pytest.fixture(scope="session", autouse=True)
def checkout_left_clean():
    before = set(os.listdir(ROOT))
    yield
    new = set(os.listdir(ROOT)) - before - LEFT_BY_TOOLS
    assert not new, (f"the tests wrote {sorted(new)} into the checkout {ROOT}: give the test a folder of its own "
                     "(tmp_path, hydra.sweep.dir=..., monkeypatch.chdir)")


def pytest_collection_finish(session):
    """Collection leaves about 400k long-lived objects (torch, transformers, Hydra); frozen, the
    cyclic collector stops rescanning them, which took a quarter of the in-process tests' time
    (the config compositions allocate heavily)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One token cache directory for the whole session: the small corpus is prepared once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def make_config(cache_dir):
    def make(**overrides):
        merged = tiny_overrides(cache_dir)
        merged.update({k.replace("__", "."): v for k, v in overrides.items()})
        return config_from_dict(nested(merged))

    return make


@pytest.fixture
def schedule_registry_kept():
    """Schedules registered during the test are forgotten after it."""
    from minigpt import schedules

    with schedules.registry_scope():
        yield


@pytest.fixture
def table_schedule_stays_here():
    """minigpt.studies.lr_table registers "table" when imported; test_schedules wants only the built-in
    names registered, so a test using this leaves the registry and the module as it found them."""
    from minigpt import schedules

    loaded = "minigpt.studies.lr_table" in sys.modules
    with schedules.registry_scope():
        yield
    if not loaded:
        sys.modules.pop("minigpt.studies.lr_table", None)


@pytest.fixture
def step_syncs():
    """The host-sync detector around the real training step (minigpt/run/host_sync.py), the CPU
    stand-in for trainer.sync_debug=error: `step_syncs(stepper, steps=6)` gives the stepper's runs
    CUDA-like records (an asynchronous copy to host memory), trains them to a few steps before
    their first flush (warm-up, not watched), then runs `steps` updates with the records' flush
    among them under the detector, each sync labelled with its step. Returns the detector.
    Every new feature of the step gets a case in tests/test_host_sync.py."""
    from minigpt.run.host_sync import EmulatedCudaEvents, HostSyncDetector
    from minigpt.run.metrics import MetricsLogger
    from minigpt.run.trainer import advance

    def run(stepper, steps: int = 6):
        runs = list(stepper.runs)
        for r in runs:
            r.records.events = EmulatedCudaEvents()
            r.metrics = MetricsLogger(r.run_dir, r.cfg.logger, config=r.cfg.to_dict(), total_steps=r.total_steps,
                                      progress=False)
        for _ in range(3):  # warm-up: first allocations, first records, the optimizer's state
            advance(stepper)
        # Then on to a few steps before the first flush without training through them: the
        # schedule, the monitor and the records take any step (and a test stays fast).
        flush_every = runs[0].flush_every
        start = max(flush_every - steps // 2, 3)
        for r in runs:
            r.step = start
        if not isinstance(getattr(type(stepper), "step", None), property):  # the stacked stepper counts its own
            stepper.step = start
        with HostSyncDetector(runs[0].device) as detector:
            for _ in range(steps):
                detector.label = stepper.step
                advance(stepper)
        assert any(r.last_record.get("step", -1) >= flush_every - 1 for r in runs), "no flush was watched"
        for r in runs:
            r.metrics.close()
            r.close()  # the run folder's lock
        return detector

    return run


@pytest.fixture
def synthetic_sweep(tmp_path):
    """pre-LN, 2 LRs x 2 warmups x 2 seeds, with a diverged seed, a crashed seed and a killed one."""
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    n = 0

    def job(**kw):
        nonlocal n
        write_job(root, n, **kw)
        n += 1

    # no warmup: LR 0.01 trains (3.0, 3.2); LR 0.1 diverges on seed 1, reaches 7.0 (> initial) on seed 2
    job(lr=0.01, warmup=0, seed=1, final=3.0, train=[6.0, 5.0, 4.0])
    job(lr=0.01, warmup=0, seed=2, final=3.2, train=[6.0, 5.5, 4.5])
    job(lr=0.1, warmup=0, seed=1, status="diverged", diverged_step=57, train=[6.0, 9.0, 8.0])
    job(lr=0.1, warmup=0, seed=2, final=7.0, train=[6.0, 8.5, 7.0])
    # 20% warmup: both LRs train
    job(lr=0.01, warmup=0.2, seed=1, final=3.1, train=[6.0, 5.9, 5.0])
    job(lr=0.01, warmup=0.2, seed=2, final=3.3, train=[6.0, 5.8, 5.2])
    job(lr=0.1, warmup=0.2, seed=1, final=2.8, train=[6.0, 5.9, 5.1])
    job(lr=0.1, warmup=0.2, seed=2, final=2.6, train=[6.0, 5.7, 5.3])
    # a job that crashed before writing anything but error.txt, and one killed mid-run
    job(lr=0.1, warmup=0.2, seed=3, initial=None, summary=False, error="RuntimeError: CUDA error: out of memory")
    job(lr=0.01, warmup=0.2, seed=3, summary=False, train=[6.0, 5.9])
    return root
