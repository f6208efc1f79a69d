"""Shared helpers of the tests (imported as `from helpers import ...`; tests/ is on sys.path,
as pytest puts the folder of a rootless test module there): the repository's root, the tiny
run's overrides, Hydra's composed config, and running train.py in a process. Fixtures and
pytest hooks stay in conftest.py."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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
