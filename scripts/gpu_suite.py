"""Measure every GPU figure the docs promise, on one CUDA GPU, in two commands of at most 9 minutes.

    python scripts/gpu_suite.py --stages smoke,bench --out /tmp/gpu_a --bring-back $OUT/a    # part 1
    python scripts/gpu_suite.py --stages sweep,warmup --out /tmp/gpu_b --bring-back $OUT/b   # part 2
    python scripts/gpu_suite.py --dry-run --out /tmp/suite     # every stage, tiny configs, on the CPU

Before any budget starts, a preflight (seconds) compiles a tiny function with inductor on the
device: a missing C compiler or Python.h stops the suite there with one line, not minutes in.
Then the stages, each with a time budget of its own (their sum, --total-budget, caps the
command), carrying on past a failed one:

  smoke     the `gpu` pytest marker's tests, then 50-step `trainer=gpu` runs with torch.compile
            in bf16 and in fp16, every step under trainer.sync_debug=error; each run must
            complete with finite losses at every step
  bench     scripts/bench.py, one command per row, in order of importance: GPT-2 small bf16 at
            micro-batch 32 with the logging comparison (the headline), fp16 + GradScaler, bf16
            at micro-batch 16; each row is written as soon as it is measured
  sweep     scripts/bench_sweep.py: 8 gpu_tiny runs stacked, one after another, in parallel;
            bench.json is rewritten after each mode
  warmup    the warmup study's headline cells, one (no warmup, warmup) pair per command, the
            architectures taking turns seed by seed: pre-LN s1, post-LN s1, pre-LN s2, ...; a pair
            is started only when the last pair's time still fits, so a cut keeps complete pairs
            for both architectures; then minigpt report on what finished

Progress lines ("[suite 123 s, 417 s left] ...") say where the time goes. Everything goes under
--out: suite.json (the machine: GPU name, torch, CUDA; each stage's outcome; rewritten after every
stage), <stage>/stage.json, <stage>/*.log and the figures the scripts draw. With --bring-back DIR,
DIR receives suite.json and results.tar.gz (all of --out), refreshed after every stage: two
files a command, whatever is cut. Prepared data goes to --data-dir (default /tmp/minigpt-data).

scripts/update_docs_from_results.py then writes the figures into README.md and the docs.
docs/performance.md has the two device commands, budgets and what a cut keeps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
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
    # Start only if the previous command of the same `paired` group took no longer than what is
    # left (a warmup pair that cannot finish would leave half a pair).
    paired: str | None = None


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
    """The modes bench_sweep.py measured (it rewrites its JSON after each, so a cut keeps them)."""

    def check() -> dict:
        report = json.loads(path.read_text())
        assert report["runs"] == runs and report["results"], f"{path}: no mode finished"
        return {"bench_sweep": report}

    return check


def check_warmup(sweep_dir: Path) -> Callable[[], dict]:
    """The cells of the complete (no warmup, warmup) pairs, with their outcome; a pair cut in
    the middle is left out (its lone cell compares with nothing)."""

    def check() -> dict:
        cells, partial = [], []
        for pair in sorted(p for p in sweep_dir.iterdir() if p.is_dir()) if sweep_dir.is_dir() else []:
            jobs = sorted(j for j in pair.iterdir() if (j / "summary.json").exists())
            if len(jobs) == 2:
                cells += [_cell(j) for j in jobs]
            else:
                partial.append(pair.name)
        assert cells, f"{sweep_dir}: no (no warmup, warmup) pair finished"
        return {"cells": cells, "pairs": len(cells) // 2, "incomplete_pairs": partial}

    return check


def _cell(job: Path) -> dict:
    s = json.loads((job / "summary.json").read_text())
    overrides = job / ".hydra" / "overrides.yaml"
    return {"job": f"{job.parent.name}/{job.name}", "status": s.get("status"), "final_val_loss": s.get("final_val_loss"),
            "peak_lr": s.get("peak_lr"), "diverged_step": s.get("diverged_step"),
            "overrides": overrides.read_text() if overrides.exists() else None}


# The warmup stage's arms: (no warmup, warmup) at the LR where the CPU study saw each architecture's contrast.
WARMUP_ARMS = {"pre_ln": ["arch=pre_ln", "optim.lr=1e-2", "scheduler.warmup=0,0.1"],
               "post_ln": ["arch=post_ln", "optim.lr=1e-3", "scheduler.warmup=0,0.5"]}


# The dry run's data: the corpus slice and vocabulary of bench_sweep.py --tiny, so that every stage
# reuses the one token cache the first builds.
DRY_DATA = ["data.max_chars=400000", "data.vocab_size=512"]


def build_stages(out: Path, data_dir: Path, dry_run: bool, budgets: dict[str, float]) -> list[Stage]:
    """The suite's stages. A dry run keeps every command and every check and shrinks the
    configs to CPU size, so anything that would crash on the GPU for a reason a CPU can show
    crashes there first."""
    data = [f"data.cache_dir={data_dir}"]
    # no schedule.png: matplotlib's import costs each run's process about a second for a figure nobody reads here
    quiet = ["trainer.progress=false", "trainer.schedule_plot=false"]

    # 1. smoke: the gpu tests, then 50 compiled steps in bf16 and fp16 with syncs made errors
    if dry_run:  # fp16 needs CUDA: the CPU rehearses the bf16 run (an fp32 run there adds no path of the GPU's)
        run_cfg = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
                   *DRY_DATA, "trainer.device=cpu",
                   "trainer.micro_batch_size=4", "trainer.compile=true", "trainer.compile_backend=eager",
                   "trainer.eval_interval=10", "trainer.eval_iters=2", "monitor.stuck_after=0"]
        smoke_steps, precisions = 10, ["bf16"]
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

    # 2. bench: one command per row, the headline first; each writes its JSON when measured
    bench_dir = out / "bench"
    if dry_run:
        tiny = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.block_size=32",
                *DRY_DATA, "trainer.device=cpu", "trainer.micro_batch_size=4"]
        # One row: the GPU rows differ only in their preset, and a CPU has no fp16 to rehearse
        # (each extra row cost 10 s of the suite's slow test for no new code path).
        rows = {"bf16": (["-c", " ".join(tiny + ["trainer.precision=bf16"]), "--compare-logging", "--repeats", "1"], [])}
        steps = ["--warmup", "1", "--steps", "2"]
    else:  # (options, overrides for every config)
        rows = {"bf16": (["--preset", "gpt2_small", "--compare-logging", "--repeats", "2"], []),  # micro-batch 32
                "fp16": (["--preset", "gpt2_small_fp16"], []),
                "bf16_mb16": (["--preset", "gpt2_small", "--compare-logging", "--repeats", "2"],
                              ["trainer.micro_batch_size=16"])}
        steps = ["--warmup", "10", "--steps", "30"]
    bench = [Command(f"bench_{name}", python(str(ROOT / "scripts" / "bench.py"), *options, *steps, "--out",
                                             str(bench_dir / f"{name}.json"), *data, *overrides),
                     check_bench(bench_dir / f"{name}.json"))
             for name, (options, overrides) in rows.items()]

    # 3. sweep: 8 small runs one after another vs stacked vs parallel
    sweep_dir = out / "sweep" / "runs"
    runs = 2 if dry_run else 8
    # argparse wants the positional overrides in one group, after the options
    # stacked first (the mode under test), then the baseline; each mode is written when it ends
    sweep_args = ["--runs", str(runs), "--out", str(sweep_dir)]
    if dry_run:
        # the stacked mode alone, the one that could crash on a GPU for a reason a CPU shows: the
        # sequential and parallel modes are plain train.py runs and sweeps, which the test suite
        # runs everywhere (and composes with these very overrides: tests/test_gpu_suite.py)
        sweep_args += ["--tiny", "--modes", "stacked", *data, "trainer.max_steps=6", "trainer.eval_interval=6"]
    else:
        sweep_args += ["--modes", "stacked,sequential,parallel", *data]
    sweep = [Command("bench_sweep", python(str(ROOT / "scripts" / "bench_sweep.py"), *sweep_args),
                     check_sweep(sweep_dir / "bench.json", runs))]

    # 4. warmup: the headline cells of the GPU study (pre-LN without/with a short warmup at a
    # high LR, post-LN without/with a long one), one pair per command, the architectures taking
    # turns seed by seed, so that a cut keeps complete pairs of both. Each pair has a sweep folder
    # of its own (jobs are named by what varies within a sweep).
    warm_dir = out / "warmup" / "sweep"
    if dry_run:
        cell = ["experiment=warmup_divergence", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                "model.block_size=32", *DRY_DATA, "trainer.device=cpu",
                "trainer.micro_batch_size=4", "trainer.max_steps=8", "trainer.eval_interval=4", "trainer.eval_iters=2"]
        seeds = [1]
    else:
        cell = ["experiment=warmup_divergence"]
        seeds = [1, 2, 3]
    warmup = []
    for seed in seeds:
        for name, args in WARMUP_ARMS.items():
            warmup.append(Command(f"warmup_{name}_s{seed}", python(
                str(ROOT / "train.py"), "-m", *cell, *args, f"seed={seed}", *data, *quiet,
                f"hydra.sweep.dir={warm_dir / f'{name}_s{seed}'}"), reserve_s=30, paired="warmup"))
    # --warmup-study: the study's sections even when only one architecture's cells (one LR) finished
    warmup.append(Command("warmup_report", python("-m", "minigpt", "report", str(warm_dir), "--warmup-study",
                                                  "--out", str(out / "warmup" / "report")), check_warmup(warm_dir)))

    stages = [Stage("smoke", budgets["smoke"], smoke), Stage("bench", budgets["bench"], bench),
              Stage("sweep", budgets["sweep"], sweep),
              Stage("warmup", budgets["warmup"], warmup,
                    note="pairs run pre-LN, post-LN, seed by seed; a pair starts only if the last one's time fits, "
                         "so a cut keeps complete pairs")]
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
    if timed_out or proc.returncode != 0:
        last = next((ln for ln in reversed((output or "").splitlines()) if ln.strip()), "")
        record |= ({"status": STATUS_TIMEOUT, "reason": f"killed after {timeout_s:.0f} s"} if timed_out else
                   {"status": STATUS_FAILED, "reason": f"exit {proc.returncode}: {last[:300]}"})
        if cmd.check is not None:  # what a cut or failed command wrote before it stopped is still a figure
            try:
                record["results"] = cmd.check()
            except (AssertionError, OSError, KeyError, ValueError):
                pass
        return record
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


class Clock:
    """The suite's time: elapsed since its budget started, and what is left of it."""

    def __init__(self, total_s: float):
        self.start, self.total = time.perf_counter(), total_s

    @property
    def deadline(self) -> float:
        return self.start + self.total

    def say(self, text: str) -> None:
        elapsed = time.perf_counter() - self.start
        print(f"[suite {elapsed:.0f} s, {max(0.0, self.total - elapsed):.0f} s left] {text}", flush=True)


def run_stage(stage: Stage, out: Path, deadline: float, env: dict, clock: Clock | None = None) -> dict:
    """All commands of a stage within min(its budget, what is left of the suite's). A failed
    command does not stop the ones after it: each measures something of its own. A `paired`
    command starts only if the previous one of its group took no longer than what is left."""
    clock = clock or Clock(deadline - time.perf_counter())
    folder = out / stage.name
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    stage_deadline = min(start + stage.budget_s, deadline)
    commands = []
    last_pair_s: dict[str, float] = {}
    for cmd in stage.commands:
        left = stage_deadline - time.perf_counter() - cmd.reserve_s
        needed = last_pair_s.get(cmd.paired) if cmd.paired else None
        if needed is not None and 0 < left < needed:
            rec = {"name": cmd.name, "command": shlex.join(cmd.argv), "status": STATUS_SKIPPED, "wall_s": 0.0,
                   "reason": f"the last pair took {needed:.0f} s and {left:.0f} s are left: it would be cut"}
        else:
            clock.say(f"{stage.name} / {cmd.name}: at most {max(0, left):.0f} s: {shlex.join(cmd.argv)[:140]}")
            rec = run_command(cmd, left, folder / f"{cmd.name}.log", env)
            if cmd.paired and rec["status"] == STATUS_PASSED:
                last_pair_s[cmd.paired] = rec["wall_s"]
        clock.say(f"{stage.name} / {cmd.name}: {rec['status']} in {rec['wall_s']:.1f} s"
                  + (f" ({rec['reason']})" if rec.get("reason") else ""))
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


# Two commands of at most 9 minutes (a GPU session: 15 minutes in all, at most 10 per command):
# smoke + bench, then sweep + warmup, 450 s of budget each, plus the preflight and the archives.
DEFAULT_BUDGETS = {"smoke": 150.0, "bench": 300.0, "sweep": 180.0, "warmup": 270.0}


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


def run_suite(stages: list[Stage], out: Path, total_budget_s: float, info: dict, env: dict,
              bring_back: Path | None = None) -> dict:
    """The stages in order within the total budget; suite.json (and, with bring_back, its copy
    and an archive of `out`) rewritten after every stage, so a command killed from outside
    still leaves the stages it finished."""
    clock = Clock(total_budget_s)
    results = []
    suite: dict = {}
    for stage in stages:
        results.append(run_stage(stage, out, clock.deadline, env, clock))
        suite = {"machine": info, "total_budget_s": total_budget_s,
                 "stages": {r["stage"]: {k: r[k] for k in ("status", "wall_s", "budget_s")} for r in results},
                 "not_run": [s.name for s in stages[len(results):]]}
        write_atomic(out / "suite.json", json.dumps(suite, indent=2) + "\n")
        if bring_back is not None:
            pack(out, bring_back)
            clock.say(f"{stage.name}: suite.json and results.tar.gz in {bring_back}")
    return suite


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def pack(out: Path, dest: Path) -> None:
    """dest/suite.json and dest/results.tar.gz (everything under `out`): two files to carry back."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "suite.json", dest / "suite.json.tmp")
    (dest / "suite.json.tmp").replace(dest / "suite.json")
    with tarfile.open(dest / "results.tar.gz.tmp", "w:gz") as tar:
        tar.add(out, arcname=out.name)
    (dest / "results.tar.gz.tmp").replace(dest / "results.tar.gz")


PREFLIGHT = """
import sys, torch
device = sys.argv[1]
f = torch.compile(lambda x: (x.sin() * 2 + 1).sum(), backend="inductor")
x = torch.randn(1024, device=device)
got, want = float(f(x)), float((x.sin() * 2 + 1).sum())
assert abs(got - want) <= 1e-3 * max(1.0, abs(want)), (got, want)
print(f"inductor compiled and ran a kernel on {device}")
"""


def preflight(device: str, env: dict, timeout_s: float = 120.0) -> str | None:
    """Can inductor build kernels here? Seconds, before any budget: None if yes, else one line
    saying what is missing. (Without a C compiler or Python.h inductor fails only when a model
    first runs, minutes into a stage.)"""
    compiler = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if compiler is None or not shutil.which(compiler):
        return ("no C compiler (cc, gcc or clang) on PATH: inductor builds its kernels with one; install gcc, or run "
                "with --no-preflight and trainer.compile=false runs only")
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.exists():
        return (f"no {header}: inductor compiles against the Python headers; install the python3-dev package "
                f"for Python {platform.python_version()}")
    try:
        proc = subprocess.run([sys.executable, "-c", PREFLIGHT, device], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"inductor did not compile a one-line function within {timeout_s:.0f} s"
    if proc.returncode != 0:
        last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), f"exit {proc.returncode}")
        return f"inductor cannot compile here: {last[:300]}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "gpu_results", help="results folder (must not hold a suite)")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/minigpt-data"), help="token caches (outside --out)")
    ap.add_argument("--dry-run", action="store_true", help="every stage with tiny configs on the CPU")
    ap.add_argument("--stages", default=",".join(DEFAULT_BUDGETS), help="comma-separated subset, in suite order")
    ap.add_argument("--budgets", help="per-stage seconds, e.g. smoke=200,warmup=400 (defaults: "
                    + ", ".join(f"{k}={v:.0f}" for k, v in DEFAULT_BUDGETS.items()) + ")")
    ap.add_argument("--total-budget", type=float, help="seconds for this command's stages (default: the sum of "
                    "their budgets)")
    ap.add_argument("--bring-back", type=Path, help="folder for suite.json and results.tar.gz, refreshed after "
                    "every stage (e.g. $OUT of a device command)")
    ap.add_argument("--no-preflight", action="store_true", help="skip the inductor compile check")
    args = ap.parse_args(argv)

    budgets = parse_budgets(args.budgets)
    if args.dry_run and not args.budgets:  # a CPU starts each process and its torch far slower than
        budgets = {k: 4 * v for k, v in budgets.items()}  # a GPU machine: a rehearsal must not be cut
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
    total = args.total_budget if args.total_budget is not None else sum(s.budget_s for s in stages)
    print(f"gpu suite: {info.get('gpu') or 'CPU dry run'}, torch {info['torch']}, CUDA {info['cuda']}; "
          f"stages {', '.join(s.name for s in stages)} in {total:.0f} s; results in {out}", flush=True)
    if not args.no_preflight:  # before the budget: the compile check costs no stage its time
        start = time.perf_counter()
        problem = preflight("cpu" if args.dry_run else "cuda", env)
        info["preflight_s"] = round(time.perf_counter() - start, 1)
        if problem:
            print(f"error: preflight: {problem}", file=sys.stderr)
            return 2
        print(f"preflight: inductor compiles here ({info['preflight_s']:.1f} s)", flush=True)
    suite = run_suite(stages, out, total, info, env, args.bring_back.resolve() if args.bring_back else None)
    for name, s in suite["stages"].items():
        print(f"{name:>8}: {s['status']:<8} {s['wall_s']:7.1f} s of {s['budget_s']:.0f} s")
    return 0 if all(s["status"] == STATUS_PASSED for s in suite["stages"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
