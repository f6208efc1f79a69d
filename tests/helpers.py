"""Shared helpers of the tests (imported as `from helpers import ...`; tests/ is on sys.path,
as pytest puts the folder of a rootless test module there): the repository's root, the tiny
run's overrides, Hydra's composed config, running train.py in a process, and synthetic sweeps
written on disk. Fixtures and pytest hooks stay in conftest.py."""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

import forkserver

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
        "trainer.eval_iters": 2, "trainer.progress": False, "trainer.schedule_plot": False, "monitor.stuck_after": 0.0,
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


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def run_python(argv: list, cwd=ROOT, timeout=600, env=None, fork=True) -> subprocess.CompletedProcess:
    """`python *argv` (a script of this checkout, or `-m minigpt ...`) in a process of its own, as
    subprocess.run(capture_output=True, text=True) returns it; forked from a server that has torch
    imported (forkserver.py) where it can be: starting the interpreter cost more than most runs.
    fork=False for a command that ends before it imports torch (bad input): a fresh interpreter
    is cheaper than the server's start in a worker that has none yet."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    full_env.update(env or {})
    argv = [str(a) for a in argv]
    done = forkserver.run(argv, cwd, full_env, timeout) if fork else None
    if done is not None:
        return done
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)


def start_python(argv: list, stdout, stderr=subprocess.STDOUT, cwd=ROOT, env=None):
    """`python *argv` started with its output to open files (not pipes: a full pipe would stall the
    run): a subprocess.Popen, or forkserver's child that answers the same pid, poll, wait,
    send_signal and kill."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    full_env.update(env or {})
    argv = [str(a) for a in argv]
    child = forkserver.start(argv, cwd, full_env, stdout, stderr)
    if child is not None:
        return child
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                            env=full_env)


def run_train(args: list[str], cwd=ROOT, timeout=600, env=None) -> subprocess.CompletedProcess:
    """`python train.py *args` in a process of its own (run_python)."""
    return run_python([ROOT / "train.py", *args], cwd=cwd, timeout=timeout, env=env)


PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path: Path) -> bool:
    """A PNG file (its signature), as the figures are written."""
    return path.is_file() and path.read_bytes()[:8] == PNG


# --- synthetic sweeps on disk (tests of minigpt/studies/sweep/ and `minigpt report`) ----------------


def run_report(*args):
    return run_python(["-m", "minigpt", "report", *args], timeout=300)


def write_job(root, num, *, lr, warmup, seed, status="completed", final=None, initial=6.0, train=(),
              norm="pre", qk=False, diverged_step=None, summary=True, error=None, total=100):
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "model": {"norm_position": norm, "qk_layernorm": qk, "z_loss": 0.0, "block_size": 32},
              "optim": {"lr": lr}, "scheduler": {"name": "cosine_warmup", "warmup": warmup},
              "trainer": {"max_steps": total, "micro_batch_size": 4, "grad_accum": 1}}
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    arch = {("pre", False): "pre_ln", ("post", False): "post_ln", ("pre", True): "pre_ln_qk"}[(norm, qk)]
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [f"optim.lr={lr}", f"scheduler.warmup={warmup}", f"arch={arch}", f"seed={seed}", "trainer.max_steps=100"]))
    records = [{"step": 0, "val/loss": initial}] if initial is not None else []
    records += [{"step": i, "train/loss": v, "train/lr": lr, "spike/loss": False, "spike/grad_norm": False}
                for i, v in enumerate(train)]
    if final is not None:
        records.append({"step": total, "val/loss": final})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary:
        s = {"status": status, "reason": "loss above 6 for 50 consecutive steps" if status == "diverged" else "",
             "diverged_step": diverged_step, "final_val_loss": final, "initial_val_loss": initial,
             "best_val_loss": final, "peak_lr": lr, "total_steps": total, "tok_per_s": 1000.0,
             "spikes/loss": 2 if status == "diverged" else 0, "spikes/grad_norm": 1}
        (d / "summary.json").write_text(json.dumps(s))
    if error:
        (d / "error.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
    return d


def table_rows(text, header_cell, after=None):
    """The body rows of the first markdown table whose header has `header_cell` (after a heading)."""
    lines = text.splitlines()
    start = lines.index(after) if after else 0
    for i in range(start, len(lines)):
        if lines[i].startswith("|") and header_cell in lines[i]:
            rows = []
            for line in lines[i + 2:]:
                if not line.startswith("|"):
                    break
                rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
            return rows
    raise AssertionError(f"no table with '{header_cell}'")


def arms_text(sweep, baseline=None):
    """report.md's text without its figures (drawing them is what takes the time)."""
    from minigpt.studies.sweep.jobs import find_jobs
    from minigpt.studies.sweep.report import report_markdown

    return report_markdown(sweep, find_jobs(sweep), None, {}, baseline=baseline)


def write_arm_job(root, name, overrides, seed, final, *, stderr=0.004, status="completed", steps=20,
                  model=None, data=None, max_steps=100, hydra=True):
    """A job folder as a multirun leaves it: .hydra/{config,overrides}.yaml, metrics.jsonl, summary.json."""
    d = root / name
    d.mkdir(parents=True)
    config = {"seed": seed, "model": {"n_layer": 2, "n_embd": 32, "block_size": 32, **(model or {})},
              "data": {"name": "stdlib", "vocab_size": 300, "cache_dir": f"/tmp/cache{seed}", **(data or {})},
              "optim": {"lr": 0.01}, "scheduler": {"name": "cosine_warmup"},
              "trainer": {"max_steps": max_steps, "micro_batch_size": 4, "eval_iters": 5}}
    if hydra:
        (d / ".hydra").mkdir()
        (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
            [f"{k}={v}" for k, v in overrides.items()] + [f"seed={seed}", f"data.cache_dir=/tmp/cache{seed}"]))
    records = [{"step": i, "train/loss": 6.0 - (6.0 - final) * i / steps, "train/lr": 0.01} for i in range(steps)]
    records.append({"step": steps, "val/loss": final, "val/loss_stderr": stderr})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "summary.json").write_text(json.dumps({
        "status": status, "final_val_loss": final if status == "completed" else None, "val_loss_stderr": stderr,
        "initial_val_loss": 6.0, "total_steps": max_steps, "diverged_step": 10 if status == "diverged" else None}))
    return d


def arms_sweep(root, finals: dict[str, dict[int, float]], **kw):
    """scheduler -> {seed: final val loss}, one job folder each."""
    (root / "multirun.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    n = 0
    for sched, by_seed in finals.items():
        for seed, final in by_seed.items():
            write_arm_job(root, f"{n}_scheduler={sched},seed={seed}", {"scheduler": sched}, seed, final, **kw)
            n += 1
    return root


# --- runs of the loss-prediction tests: losses drawn from the multi-power law with these parameters --

TRUE = {"L0": 3.0, "A": 1.6, "alpha": 0.5, "B": 70.0, "C": 0.5, "beta": 0.6, "gamma": 0.5}


def fake_run(run_dir, overrides, every=20, noise=5e-4, seed=0, lr_records=True):
    """A run directory as train.py writes it, with losses drawn from the multi-power law."""
    import numpy as np

    from minigpt.launch.compose import compose
    from minigpt.studies import loss_law
    from minigpt.studies import loss_prediction as lp

    lrs = lp.planned_lrs(compose(overrides))
    steps = np.arange(0, len(lrs) + 1, every)
    losses = loss_law.multi_power_loss(lrs, np.maximum(steps, 1), **TRUE)
    losses *= 1 + noise * np.random.default_rng(seed).standard_normal(len(steps))
    val = dict(zip(steps.tolist(), losses.tolist()))
    records = [{"step": s, **({"train/lr": float(lr)} if lr_records else {}), "train/loss": 9.0,
                **({"val/loss": val[s]} if s in val else {})} for s, lr in enumerate(lrs)]
    records.append({"step": len(lrs), "val/loss": val[len(lrs)]})
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides + [f"hydra.run.dir={run_dir}"]))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return lrs


SHORT = ["trainer.max_steps=200", "trainer.eval_interval=20"]


# --- a warmup study in memory (the study's signatures: tests of minigpt/studies/sweep/) --------------

ENTROPY = 6.5  # trains well: <= 0.8 x 6.5 = 5.2; fails: diverged, stuck, or >= 6.4


def warmup_job(arch, lr, warmup, seed, final=None, status="completed", reason="", total=100, lrs=None, losses=None):
    """A job of the warmup study (arch pre, post or qk) as find_jobs reads it, with its records."""
    from minigpt.studies.sweep.jobs import Job

    norm, qk = {"pre": ("pre", False), "post": ("post", False), "qk": ("pre", True)}[arch]
    lrs = lrs or [lr] * 20
    losses = losses or [8.0] * len(lrs)
    records = [{"step": 0, "val/loss": 8.0}]
    records += [{"step": i, "train/loss": v, "train/lr": x} for i, (v, x) in enumerate(zip(losses, lrs))]
    summary = {"status": status, "reason": reason, "final_val_loss": final, "initial_val_loss": 8.0,
               "unigram_entropy_val": ENTROPY, "total_steps": total, "plan": {"warmup_steps": warmup},
               "diverged_step": 60 if status == "diverged" else None}
    config = {"seed": seed, "model": {"norm_position": norm, "qk_layernorm": qk}, "optim": {"lr": lr}}
    return Job(Path(f"/{arch}-{lr}-{warmup}-{seed}"), f"{arch}{lr}{warmup}{seed}", [], config, summary, records, None)


STUCK = dict(status="diverged", reason="loss stuck at the unigram level: mean 6.6 over the last 20 steps")


def study_jobs():
    """Three seeds of pre-LN and post-LN at two LRs, with and without warmup."""
    jobs = []
    for seed, (bare, warm) in enumerate([(5.0, 4.5), (5.1, 4.6), (4.9, 4.6)], start=1):
        jobs += [warmup_job("pre", 0.01, 0, seed, bare), warmup_job("pre", 0.01, 10, seed, warm)]  # gaps 0.5, 0.5, 0.3
    for seed, (bare, warm) in enumerate([(4.8, 4.5), (4.75, 4.6), (4.9, 4.6)], start=1):
        jobs += [warmup_job("pre", 0.001, 0, seed, bare), warmup_job("pre", 0.001, 10, seed, warm)]  # 0.3, 0.15 (!), 0.3
    for seed in (1, 2, 3):
        jobs += [warmup_job("post", 0.001, 0, seed, **STUCK), warmup_job("post", 0.001, 50, seed, 4.7)]
        jobs += [warmup_job("post", 0.01, 0, seed, 6.45), warmup_job("post", 0.01, 50, seed, 6.3 if seed == 2 else 5.0)]
    return jobs
