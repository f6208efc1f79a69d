"""Measure every GPU figure the docs promise, in one command, on one CUDA GPU.

    python scripts/gpu_suite.py --out gpu_results              # one CUDA GPU, about 20 minutes
    python scripts/gpu_suite.py --dry-run --out /tmp/suite     # every stage, tiny configs, on the CPU
    python scripts/gpu_suite.py --stages smoke,bench --out gpu_results

Stages, in this order, each with a time budget of its own and carrying on past a failed one:

  smoke     the `gpu` pytest marker's tests, then 50-step `trainer=gpu` runs with torch.compile
            in bf16 and in fp16, every step under torch.cuda.set_sync_debug_mode("error")
            (trainer.sync_debug=error: a host-device synchronisation inside the step fails the
            run); each run must complete with finite losses at every step
  bench     scripts/bench.py: GPT-2 small, bf16 + compile + fused AdamW at micro-batch 16 and 32
            with records and spike monitor on, and the logging overhead (--compare-logging);
            fp16 + GradScaler; tokens/s, MFU and peak memory
  sweep     scripts/bench_sweep.py: 8 gpu_tiny runs one after another vs stacked vs parallel
  warmup    the warmup study's headline cells on the GPU (as many as the remaining budget
            allows), then minigpt report on what finished

Everything goes under --out: suite.json (the machine: GPU name, torch, CUDA; and each stage's
outcome), <stage>/stage.json (status, wall time, budget, the commands with exit codes, the
stage's figures), <stage>/*.log (each command's output, its tail kept when long) and the
figures the scripts draw. Prepared data goes to --data-dir (default /tmp/minigpt-data), outside
--out, so the folder stays small enough to bring back (a few MB).

scripts/update_docs_from_results.py then writes the figures into README.md and
docs/performance.md. docs/performance.md has the recipe for a fresh GPU machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
LOG_KEEP_BYTES = 200_000  # the tail of each command's output kept in its .log file

STATUS_PASSED, STATUS_FAILED, STATUS_TIMEOUT, STATUS_SKIPPED = "passed", "failed", "timeout", "skipped"


@dataclass
class Command:
    """One subprocess of a stage. `check` reads what the command wrote and returns the figures
    it adds to the stage's results; it raises AssertionError when the outcome is wrong."""

    name: str
    argv: list[str]
    check: Callable[[], dict] | None = None
    reserve_s: float = 0.0  # seconds of the stage's budget held back for the commands after this one


@dataclass
class Stage:
    name: str
    budget_s: float
    commands: list[Command]
    note: str = ""
    results: dict = field(default_factory=dict)


# --- what each stage runs ------------------------------------------------------------------------


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


def check_run(run_dir: Path, steps: int) -> Callable[[], dict]:
    """A smoke run completed, every step on record with a finite loss."""

    def check() -> dict:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed", f"{run_dir.name}: status {summary['status']}: {summary.get('reason')}"
        losses = [r["train/loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in r]
        assert len(losses) == steps, f"{run_dir.name}: {len(losses)} step records, expected {steps}"
        bad = [i for i, v in enumerate(losses) if not (isinstance(v, (int, float)) and math.isfinite(v))]
        assert not bad, f"{run_dir.name}: non-finite loss at steps {bad[:5]}"
        return {run_dir.name: {k: summary.get(k) for k in ("device", "precision", "final_val_loss", "tok_per_s",
                                                           "train_time_s", "step")}}

    return check


def check_bench(path: Path) -> Callable[[], dict]:
    def check() -> dict:
        results = json.loads(path.read_text())["results"]
        assert results, f"{path.name}: no results"
        return {path.stem: results}

    return check


def check_sweep(path: Path, runs: int) -> Callable[[], dict]:
    def check() -> dict:
        report = json.loads(path.read_text())
        assert report["runs"] == runs and report["results"], f"{path}: incomplete"
        return {"bench_sweep": report}

    return check


def check_warmup(sweep_dir: Path) -> Callable[[], dict]:
    """The cells that finished in the budget, with their outcome (the report reads the rest)."""

    def check() -> dict:
        cells = []
        for job in sorted(p for p in sweep_dir.glob("*/*") if (p / "summary.json").exists()):
            s = json.loads((job / "summary.json").read_text())
            overrides = (job / ".hydra" / "overrides.yaml")
            cells.append({"job": f"{job.parent.name}/{job.name}", "status": s.get("status"),
                          "final_val_loss": s.get("final_val_loss"),
                          "peak_lr": s.get("peak_lr"), "diverged_step": s.get("diverged_step"),
                          "overrides": overrides.read_text() if overrides.exists() else None})
        assert cells, f"{sweep_dir}: no job finished"
        return {"cells": cells}

    return check


def build_stages(out: Path, data_dir: Path, dry_run: bool, budgets: dict[str, float]) -> list[Stage]:
    """The suite's stages. A dry run keeps every command and every check and shrinks the
    configs to CPU size, so anything that would crash on the GPU for a reason a CPU can show
    crashes there first."""
    data = [f"data.cache_dir={data_dir}"]
    quiet = ["trainer.progress=false"]

    # 1. smoke: the gpu tests, then 50 compiled steps in bf16 and fp16 with syncs made errors
    if dry_run:  # fp16 needs CUDA; bf16 autocast and fp32 both run on the CPU
        run_cfg = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
                   "data.max_chars=200000", "data.vocab_size=300", "trainer.device=cpu",
                   "trainer.micro_batch_size=4", "trainer.compile=true", "trainer.compile_backend=eager",
                   "trainer.eval_interval=10", "trainer.eval_iters=2", "monitor.stuck_after=0"]
        smoke_steps, precisions = 10, ["bf16", "fp32"]
    else:
        run_cfg = ["model=gpu_tiny", "trainer=gpu", "trainer.compile=true", "trainer.eval_interval=25",
                   "trainer.eval_iters=5", "monitor.stuck_after=0"]
        smoke_steps, precisions = 50, ["bf16", "fp16"]
    # the files that hold gpu tests: collecting the whole suite to pick them takes seconds
    gpu_tests = [str(p) for p in sorted((ROOT / "tests").glob("test_*.py"))
                 if re.search(r"^@pytest\.mark\.gpu\b", p.read_text(), re.M)]
    smoke = [Command("pytest_gpu", python("-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                          *gpu_tests, "-o", "addopts=", "-rs"))]
    for precision in precisions:
        run_dir = out / "smoke" / f"run_{precision}"
        smoke.append(Command(f"run_{precision}", python(
            str(ROOT / "train.py"), *run_cfg, *data, *quiet, f"trainer.precision={precision}",
            f"trainer.max_steps={smoke_steps}", "trainer.sync_debug=error", "trainer.ckpt_interval=0",
            f"hydra.run.dir={run_dir}"), check_run(run_dir, smoke_steps)))

    # 2. bench: GPT-2 small at two micro-batches with the logging comparison; fp16
    bench_dir = out / "bench"
    if dry_run:
        tiny = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32",
                "data.max_chars=200000", "data.vocab_size=300", "trainer.device=cpu", "trainer.micro_batch_size=4"]
        bench_bf16 = ["-c", " ".join(tiny + ["trainer.precision=bf16"]),
                      "-c", " ".join(tiny + ["trainer.precision=bf16", "trainer.micro_batch_size=8"]),
                      "--warmup", "1", "--steps", "2", "--compare-logging", "--repeats", "1", *data]
        bench_fp16 = ["-c", " ".join(tiny + ["trainer.precision=fp32"]), "--warmup", "1", "--steps", "2", *data]
    else:
        bench_bf16 = ["--preset", "gpt2_small", "-c", "model=gpt2_small trainer=gpu data.vocab_size=50257 "
                      "trainer.micro_batch_size=16", "--warmup", "10", "--steps", "30", "--compare-logging",
                      "--repeats", "3", *data]
        bench_fp16 = ["--preset", "gpt2_small_fp16", "--warmup", "10", "--steps", "30", *data]
    bench = [Command("bench_bf16", python(str(ROOT / "scripts" / "bench.py"), *bench_bf16,
                                          "--out", str(bench_dir / "bf16.json")), check_bench(bench_dir / "bf16.json")),
             Command("bench_fp16", python(str(ROOT / "scripts" / "bench.py"), *bench_fp16,
                                          "--out", str(bench_dir / "fp16.json")), check_bench(bench_dir / "fp16.json"))]

    # 3. sweep: 8 small runs one after another vs stacked vs parallel
    sweep_dir = out / "sweep" / "runs"
    runs = 2 if dry_run else 8
    # argparse wants the positional overrides in one group, after the options
    sweep_args = ["--runs", str(runs), "--out", str(sweep_dir)]
    if dry_run:
        sweep_args += ["--tiny", "--modes", "sequential,stacked", *data, "trainer.max_steps=6", "trainer.eval_interval=6"]
    else:
        sweep_args += data
    sweep = [Command("bench_sweep", python(str(ROOT / "scripts" / "bench_sweep.py"), *sweep_args),
                     check_sweep(sweep_dir / "bench.json", runs))]

    # 4. warmup: the headline cells of the GPU study (pre-LN without/with a short warmup at a
    # high LR, post-LN without/with a long one; 3 seeds each), then the report of what finished.
    # Each architecture's sweep has a folder of its own: jobs are named by what varies within a
    # sweep, so two sweeps in one folder would claim the same job folders (and be refused).
    warm_dir = out / "warmup" / "sweep"
    if dry_run:
        cell = ["experiment=warmup_divergence", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                "model.block_size=32", "data.max_chars=200000", "data.vocab_size=300", "trainer.device=cpu",
                "trainer.micro_batch_size=4", "trainer.max_steps=8", "trainer.eval_interval=4",
                "trainer.eval_iters=2", "seed=1"]
    else:
        cell = ["sweep=warmup_divergence", "seed=1,2,3"]
    cells = {"pre_ln": ["arch=pre_ln", "optim.lr=1e-2", "scheduler.warmup=0,0.1"],
             "post_ln": ["arch=post_ln", "optim.lr=1e-3", "scheduler.warmup=0,0.5"]}
    warmup = [Command(f"warmup_{name}", python(str(ROOT / "train.py"), "-m", *cell, *args, *data, *quiet,
                                               f"hydra.sweep.dir={warm_dir / name}"), reserve_s=60)
              for name, args in cells.items()]
    # --warmup-study: the study's sections even when only one architecture's cells (one LR) finished
    warmup.append(Command("warmup_report", python("-m", "minigpt", "report", str(warm_dir), "--warmup-study",
                                                  "--out", str(out / "warmup" / "report")), check_warmup(warm_dir)))

    stages = [Stage("smoke", budgets["smoke"], smoke), Stage("bench", budgets["bench"], bench),
              Stage("sweep", budgets["sweep"], sweep),
              Stage("warmup", budgets["warmup"], warmup,
                    note="the sweep's jobs run in order; those that finish within the budget are kept")]
    return stages


# --- running stages ------------------------------------------------------------------------------


def keep_tail(text: str) -> str:
    data = text.encode(errors="replace")
    if len(data) <= LOG_KEEP_BYTES:
        return text
    return f"[... {len(data) - LOG_KEEP_BYTES} bytes cut ...]\n" + data[-LOG_KEEP_BYTES:].decode(errors="replace")


def run_command(cmd: Command, timeout_s: float, log: Path, env: dict) -> dict:
    """Runs one command with a hard time limit; its output goes to `log`. Never raises."""
    start = time.perf_counter()
    record = {"name": cmd.name, "command": shlex.join(cmd.argv), "log": log.name}
    if timeout_s <= 0:
        return record | {"status": STATUS_SKIPPED, "reason": "no time left in the stage's budget", "wall_s": 0.0}
    # Own process group, so a timed-out command's children (compile workers, sweep jobs) go too.
    proc = subprocess.Popen(cmd.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        output, _ = proc.communicate()
        timed_out = True
    wall = time.perf_counter() - start
    log.write_text(keep_tail(output or ""))
    record |= {"returncode": proc.returncode, "wall_s": round(wall, 2)}
    if timed_out:
        return record | {"status": STATUS_TIMEOUT, "reason": f"killed after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        last = next((ln for ln in reversed((output or "").splitlines()) if ln.strip()), "")
        return record | {"status": STATUS_FAILED, "reason": f"exit {proc.returncode}: {last[:300]}"}
    if cmd.check is not None:
        try:
            record["results"] = cmd.check()
        except (AssertionError, OSError, KeyError, ValueError) as e:
            return record | {"status": STATUS_FAILED, "reason": f"check failed: {e}"}
    return record | {"status": STATUS_PASSED}


def drop_checkpoints(folder: Path) -> int:
    """Deletes the runs' checkpoint files once a stage is checked: the figures are in the JSON
    and the records, and 8 small GPU runs' checkpoints alone would be hundreds of MB to carry back."""
    files = [p for p in folder.rglob("*.pt") if p.is_file()]
    for p in files:
        p.unlink()
    return len(files)


def run_stage(stage: Stage, out: Path, deadline: float, env: dict) -> dict:
    """All commands of a stage within min(its budget, what is left of the suite's). A failed
    command does not stop the ones after it: each measures something of its own."""
    folder = out / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stage_deadline = min(start + stage.budget_s, deadline)
    commands = []
    for cmd in stage.commands:
        left = stage_deadline - time.perf_counter() - cmd.reserve_s
        print(f"[{stage.name}] {cmd.name}: {shlex.join(cmd.argv)[:160]} (at most {max(0, left):.0f} s)", flush=True)
        rec = run_command(cmd, left, folder / f"{cmd.name}.log", env)
        print(f"[{stage.name}] {cmd.name}: {rec['status']} in {rec['wall_s']:.1f} s"
              + (f" ({rec['reason']})" if rec.get("reason") else ""), flush=True)
        commands.append(rec)
    removed = drop_checkpoints(folder)
    statuses = [c["status"] for c in commands]
    status = (STATUS_PASSED if all(s == STATUS_PASSED for s in statuses) else
              STATUS_TIMEOUT if STATUS_TIMEOUT in statuses else
              STATUS_FAILED if STATUS_FAILED in statuses else STATUS_SKIPPED)
    result = {"stage": stage.name, "status": status, "budget_s": stage.budget_s,
              "wall_s": round(time.perf_counter() - start, 2), "note": stage.note, "commands": commands,
              "checkpoints_removed": removed,
              "results": {k: v for c in commands for k, v in (c.get("results") or {}).items()}}
    (folder / "stage.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def machine() -> dict:
    """The facts every figure of the suite is reported with."""
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "host": platform.node(), "cpu_count": os.cpu_count(),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": torch.cuda.get_device_name(0), "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                 "gpu_count": torch.cuda.device_count(), "cudnn": torch.backends.cudnn.version()}
    else:
        info |= {"gpu": None}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


DEFAULT_BUDGETS = {"smoke": 300.0, "bench": 360.0, "sweep": 240.0, "warmup": 300.0}


def parse_budgets(text: str | None) -> dict[str, float]:
    budgets = dict(DEFAULT_BUDGETS)
    for item in filter(None, (text or "").split(",")):
        name, _, value = item.partition("=")
        if name not in budgets:
            raise SystemExit(f"error: --budgets: unknown stage '{name}'; valid: {', '.join(budgets)}")
        try:
            budgets[name] = float(value)
        except ValueError:
            raise SystemExit(f"error: --budgets: '{item}' needs seconds, e.g. {name}=300") from None
        if budgets[name] <= 0:
            raise SystemExit(f"error: --budgets: {name} must be positive; got {value}")
    return budgets


def run_suite(stages: list[Stage], out: Path, total_budget_s: float, info: dict, env: dict) -> dict:
    deadline = time.perf_counter() + total_budget_s
    results = []
    for stage in stages:
        results.append(run_stage(stage, out, deadline, env))
    suite = {"machine": info, "total_budget_s": total_budget_s,
             "stages": {r["stage"]: {k: r[k] for k in ("status", "wall_s", "budget_s")} for r in results}}
    (out / "suite.json").write_text(json.dumps(suite, indent=2) + "\n")
    return suite


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "gpu_results", help="results folder (must not hold a suite)")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/minigpt-data"), help="token caches (outside --out)")
    ap.add_argument("--dry-run", action="store_true", help="every stage with tiny configs on the CPU")
    ap.add_argument("--stages", default=",".join(DEFAULT_BUDGETS), help="comma-separated subset, in suite order")
    ap.add_argument("--budgets", help="per-stage seconds, e.g. smoke=200,warmup=400 (defaults: "
                    + ", ".join(f"{k}={v:.0f}" for k, v in DEFAULT_BUDGETS.items()) + ")")
    ap.add_argument("--total-budget", type=float, default=1200.0, help="seconds for the whole suite (default 1200)")
    args = ap.parse_args(argv)

    budgets = parse_budgets(args.budgets)
    wanted = [s for s in args.stages.split(",") if s]
    unknown = [s for s in wanted if s not in DEFAULT_BUDGETS]
    if unknown:
        print(f"error: --stages: unknown stage {unknown[0]!r}; valid: {', '.join(DEFAULT_BUDGETS)}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    if (out / "suite.json").exists():
        print(f"error: {out} already holds a suite's results; pass another --out", file=sys.stderr)
        return 2
    info = machine()
    if not args.dry_run and not info["gpu"]:
        print("error: no CUDA GPU is visible; run with --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    info["dry_run"] = args.dry_run
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled", WANDB_SILENT="true",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    stages = [s for s in build_stages(out, args.data_dir.resolve(), args.dry_run, budgets) if s.name in wanted]
    print(f"gpu suite: {info.get('gpu') or 'CPU dry run'}, torch {info['torch']}, CUDA {info['cuda']}; "
          f"stages {', '.join(s.name for s in stages)}; results in {out}", flush=True)
    suite = run_suite(stages, out, args.total_budget, info, env)
    for name, s in suite["stages"].items():
        print(f"{name:>8}: {s['status']:<8} {s['wall_s']:7.1f} s of {s['budget_s']:.0f} s")
    return 0 if all(s["status"] == STATUS_PASSED for s in suite["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
