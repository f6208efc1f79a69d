"""Shared fixtures: a small slice of the default corpus, tiny configs, and running train.py."""

from __future__ import annotations

import copy
import functools
import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt.config import config_from_dict

ROOT = Path(__file__).resolve().parents[1]

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


def pytest_collection_finish(session):
    """Collection leaves about 400k long-lived objects (torch, transformers, Hydra); frozen, the
    cyclic collector stops rescanning them, which took a quarter of the in-process tests' time
    (the config compositions allocate heavily)."""
    gc.collect()
    gc.freeze()


SMALL_CHARS = 400_000  # a slice of the stdlib corpus: a BPE trains on it in well under a second


def nested(overrides: dict) -> dict:
    """{'model.n_layer': 1} -> {'model': {'n_layer': 1}}"""
    out: dict = {}
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def tiny_overrides(cache_dir) -> dict:
    """A model and run small enough for a test to train in a few seconds on 2 cores."""
    return {
        "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 32,
        "data.max_chars": SMALL_CHARS, "data.vocab_size": 512, "data.cache_dir": str(cache_dir),
        "trainer.max_steps": 12, "trainer.micro_batch_size": 4, "trainer.eval_interval": 4,
        "trainer.eval_iters": 2, "trainer.progress": False, "monitor.stuck_after": 0.0,
        "scheduler.name": "cosine_warmup",
    }


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


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]) -> dict:
    from omegaconf import OmegaConf

    from minigpt.launch.compose import composed

    return OmegaConf.to_container(composed(list(overrides), with_hydra=False))


def composed(*overrides: str) -> dict:
    """The config Hydra composes from conf/ for these overrides (unresolved plain dicts, a fresh copy)."""
    return copy.deepcopy(_composed(tuple(overrides)))


def composed_scheduler(name: str) -> dict:
    """The scheduler group of `scheduler=<name>` as Hydra composes it: the file over the defaults."""
    return composed(f"scheduler={name}")["scheduler"]


def hydra_args(cache_dir, run_dir, **extra) -> list[str]:
    """train.py command-line overrides for the tiny run."""
    args = {k: v for k, v in tiny_overrides(cache_dir).items() if k != "scheduler.name"}
    args.update(extra)
    out = []
    for k, v in args.items():
        v = {True: "true", False: "false", None: "null"}.get(v, v) if isinstance(v, (bool, type(None))) else v
        out.append(f"{k}={v}")
    return out + [f"hydra.run.dir={run_dir}"]


def run_train(args: list[str], cwd=ROOT, timeout=600, env=None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


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
