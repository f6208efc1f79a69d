"""Running the jobs of a command: one Hydra job's result to a log line and an exit status.

minigpt/launch/train.py hands each job's typed config to `run_job`, which trains it (or dry-runs
it, or runs the LR range test) and turns how it ended into the process's exit status: 0 completed,
1 a bug (traceback), 2 bad input (one line: `bad_input`), 3 diverged (summary.json says why),
128 + N stopped by signal N (the command that continues it: `resume_command`). Under Slurm a
stop before the time limit requeues the job (`_requeue`). Jobs of hydra/launcher=stacked are not
trained one by one: `run_job` adds them to the list its caller gives (`StackedJob`) and the caller
trains them together once Hydra has set up the sweep (`train_stacked_jobs`). `claim_run_folders`
takes each job's folder in the launching process, once the precheck has passed; `SweepSummary`
ends a sweep with one line per job.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shlex
import signal
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from minigpt.config import Config
from minigpt.errors import UserError
from minigpt.files import open_append, write_atomic
from minigpt.run.metrics import RunStatus, write_failed_summary

# Exit statuses of a single run: 0 completed, 1 a bug (traceback), 2 bad input (one line),
# 3 diverged (summary.json says why), 128 + N stopped by signal N (resume with trainer.resume=auto).
EXIT_DIVERGED = 3
log = logging.getLogger("minigpt")


class StackedJob(NamedTuple):
    """A job of hydra/launcher=stacked, set up by Hydra (its folder, .hydra/, config) and trained
    later with the others of its sweep (minigpt/run/stack.py)."""
    config: Config
    run_dir: Path
    max_stack: int | None  # hydra.sweeper.max_batch_size: at most this many runs in one stack



def run_job(config: Config, hc, stacked: list[StackedJob] | None = None) -> float | None:
    """Train (or LR-range-test) `config`, the typed config of one Hydra job (`hc`: its HydraConfig);
    returns the final validation loss, inf for a failed or diverged job, None for a stacked job:
    that one is appended to `stacked`, which the caller trains once the sweep has set up every job
    (train_stacked_jobs)."""
    from minigpt.run.trainer import train  # torch: seconds to import, so not before the check

    submitit_job = _ranks_from_submitit()
    if int(os.environ.get("RANK", "0")) > 0:
        log.setLevel(logging.WARNING)  # under DDP, rank 0 speaks for all
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if multirun and hc.runtime.choices.get("hydra/launcher") == "parallel":
        _name_the_job_in_console_lines(hc.job.num)
    if multirun and hc.runtime.choices.get("hydra/launcher") == "stacked" and stacked is None:
        raise RuntimeError("run_job: a job of hydra/launcher=stacked needs the caller's list of stacked jobs")
    try:
        if submitit_job and config.trainer.resume is None and not config.trainer.eval_only:
            # A requeued job (preempted, or at its time limit) runs the same command again: it
            # continues from its newest checkpoint; a first attempt finds none and starts at step 0.
            config.trainer.resume = "auto"
        if multirun and config.logger.group is None and not os.environ.get("WANDB_RUN_GROUP"):
            config.logger.group = Path(hc.sweep.dir).name  # wandb runs of one sweep share a group
        if config.trainer.dry_run:
            return _dry_run(config, run_dir, multirun, hc)
        if config.task == "lr_range_test":
            return _lr_range_test(config, run_dir)
        if multirun and hc.runtime.choices.get("hydra/launcher") == "stacked":
            stacked.append(StackedJob(config, run_dir, hc.sweeper.get("max_batch_size")))
            return None  # trained after the sweep has set up every job: see train_stacked_jobs()
        result = train(config, run_dir)
    except UserError as e:
        return bad_input(e, hc)
    except Exception as e:
        if not multirun:
            raise
        # One broken cell must not end the sweep: record why, move on to the next job.
        write_atomic(run_dir / "error.txt", traceback.format_exc())
        log.error(f"job {hc.job.num} failed: {type(e).__name__}: {e} (traceback in {run_dir / 'error.txt'})")
        write_failed_summary(run_dir, {"status": RunStatus.FAILED.value, "reason": f"{type(e).__name__}: {e}"})
        return math.inf

    s = result.summary
    if s.get("task") == "eval_only":
        stderr = f" +- {s['val_loss_stderr']:.4f} (standard error over the batches)" if s["val_loss_stderr"] else ""
        log.info(f"eval: val loss {s['final_val_loss']:.4f}{stderr} on {s['eval_iters']} batches ({s['eval_tokens']:,} "
                 f"tokens) of {s['init_from']['path']} at step {s['step']}; summary in {run_dir / 'summary.json'}")
    elif result.status == RunStatus.COMPLETED:
        # from the unrounded values: the summary's ratio is already rounded to 4 places (0.6415 would print 0.641)
        ratio = f" = {s['final_val_loss'] / s['unigram_entropy_val']:.3f} x the unigram entropy " \
            f"{s['unigram_entropy_val']:.3f}" if s.get("val_loss_over_unigram_entropy") else ""
        log.info(f"done: final val loss {s['final_val_loss']:.4f}{ratio}; {s['tokens']:,} tokens in "
                 f"{s['train_time_s']:.0f}s ({s['tok_per_s']:,.0f} tok/s); outputs in {run_dir}")
    elif result.status == RunStatus.DIVERGED:
        log.warning(f"diverged at step {s['diverged_step']}: {s['reason']}; metrics kept in {run_dir}")
        if not multirun:  # a sweep records it (summary.json, inf for the sweeper) and goes on
            sys.exit(EXIT_DIVERGED)
    elif result.status == RunStatus.STOPPED:  # a watcher ended it (a trainer driven from code, not a signal)
        log.info(f"stopped at step {s['step']}: {s.get('reason', 'by a watcher')}; outputs in {run_dir}")
    else:
        signum = signal.Signals[s["reason"].split()[-1]]
        if submitit_job and signum == signal.SIGUSR2:
            _requeue(signum, result)  # does not return on the rank that requeues
        command = resume_command(hc, run_dir, multirun)
        if int(os.environ.get("RANK", "0")) == 0:  # one message, from the rank that saved
            what = "the sweep (its finished jobs stay as they are, the others continue or start)" if multirun else ""
            log.warning(f"{s['reason']} at step {s['step']}; checkpoint {result.checkpoint}. Resume {what or 'with'}"
                        f"{' with' if what else ''}:\n  {command}")
        sys.exit(128 + signum)
    return result.final_val_loss

# The command line as typed (train.py's main() sets it; job processes of the parallel and Slurm
# launchers inherit it), for the resume command of a stopped sweep.
COMMAND_ENV = "MINIGPT_COMMAND_LINE"


def resume_command(hc, run_dir: Path, multirun: bool) -> str:
    """The command that continues a stopped run: in a sweep, the sweep's own command line into the
    same sweep folder (every job resumes or starts; finished ones say so); else the job's overrides
    into its run folder."""
    typed = os.environ.get(COMMAND_ENV)
    drop = ("trainer.resume", "hydra.run.dir", "hydra.sweep.dir", "hydra.job.config.override_dirname.exclude_keys")
    if multirun and typed is not None:
        argv = [a for a in shlex.split(typed) if a.partition("=")[0].lstrip("+~") not in drop]
        return shlex.join(["python", "train.py", *argv, f"hydra.sweep.dir={hc.sweep.dir}", "trainer.resume=auto"])
    overrides = [o for o in hc.overrides.task if o.split("=")[0].lstrip("+~") not in drop]
    return shlex.join(["python", "train.py", *overrides, f"hydra.run.dir={run_dir}", "trainer.resume=auto"])

def _name_the_job_in_console_lines(num: int) -> None:
    """Jobs of the parallel launcher write to one console at once: each of their lines starts with
    the job's number (the job's train.log, its own file, stays as it is)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            fmt = handler.formatter._fmt if handler.formatter is not None else "%(message)s"
            handler.setFormatter(logging.Formatter(f"[job {num}] {fmt}"))


def bad_input(e: UserError, hc) -> float:
    """A job's bad input: one line and exit status 2, or in a sweep a failed job (its summary.json
    says why, the sweeper gets inf) and the sweep goes on."""
    from minigpt.run.folder import RunFolderInUse, run_contents

    if hc.mode != RunMode.MULTIRUN:
        run_dir = Path(hc.runtime.output_dir)
        if not isinstance(e, RunFolderInUse) and run_dir.is_dir() and not run_contents(run_dir):
            # Bad input found inside the run (by the data, say): the folder Hydra made says why,
            # so that a report lists it as failed rather than incomplete. A folder that holds a
            # run keeps what it holds.
            write_failed_summary(run_dir, {"status": RunStatus.FAILED.value, "reason": str(e)})
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

    log.error(f"job {hc.job.num} failed: {e}")
    if not isinstance(e, RunFolderInUse):  # the folder is another run's: nothing of it is ours to write
        write_failed_summary(Path(hc.runtime.output_dir), {"status": RunStatus.FAILED.value, "reason": str(e)})
    return math.inf


def _dry_run(config: Config, run_dir: Path, multirun: bool, hc) -> None:
    """trainer.dry_run=true: the plan in words (one line per job of a sweep), schedule.png and
    plan.json in the run folder; nothing else happens (minigpt/run/dry_run.py)."""
    import torch

    from minigpt.run.dry_run import dry_run, write_dry_run
    from minigpt.run.runtime import resolve_precision

    tc = config.trainer
    device = torch.device("cuda" if tc.device != "cpu" and torch.cuda.is_available() else "cpu")
    result = dry_run(config, int(os.environ.get("WORLD_SIZE", "1")), resolve_precision(tc.precision, device))
    write_dry_run(result, run_dir)
    if multirun:
        log.info(f"dry run, job {hc.job.num} ({hc.job.override_dirname or 'no overrides'}): {result.line}")
    else:
        for line in result.lines:
            log.info(line)
        log.info(f"dry run: nothing prepared, built or trained; the planned LR is drawn in {run_dir / 'schedule.png'}")
    return None


def _lr_range_test(config, run_dir: Path) -> float:
    from minigpt.studies.lr_range_test import PLOT_FILE, run_lr_range_test

    r = run_lr_range_test(config, run_dir)
    log.info(f"lr range test: {len(r.losses)} steps, LR {r.lrs[0]:.3g} .. {r.lrs[-1]:.3g}; ended: {r.stop_reason}")
    if r.suggested_lr is None:
        log.warning("lr range test: too few steps for a suggestion; raise trainer.max_steps or optim.lr")
        return math.inf
    steepest = f"{r.steepest_lr:.3g}" if r.steepest_lr is not None else "n/a"
    log.info(f"suggested peak LR: {r.suggested_lr:.3g} (minimum / 10; loss minimum at {r.min_lr:.3g}), "
             f"steepest descent at {steepest}; plot: {run_dir / PLOT_FILE}")
    return min(v for v in r.smoothed if math.isfinite(v))

def train_stacked_jobs(jobs: list[StackedJob]) -> None:
    """Train the stacked jobs of a sweep together, once Hydra has set up every job; each job's
    result line, and the exit status of a stack that failed or was stopped."""
    from minigpt.run.stack import train_stacked

    configs, run_dirs, max_stack = [j.config for j in jobs], [j.run_dir for j in jobs], jobs[0].max_stack
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler):  # the last job's log file: closed with its job
            logging.getLogger().removeHandler(handler)
            handler.close()
        else:  # the console: plain lines, as in a job (not Hydra's own format)
            handler.setFormatter(logging.Formatter("%(message)s"))
    log_file = logging.StreamHandler(open_append(run_dirs[0].parent / "stacked.log"))  # never through a link
    log_file.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(log_file)
    log.info(f"training {len(jobs)} jobs stacked" + (f", at most {max_stack} at once" if max_stack else ""))
    try:
        results = train_stacked(configs, run_dirs, max_stack=max_stack)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        text = traceback.format_exc()
        for d in run_dirs:
            write_atomic(d / "error.txt", text)
            write_failed_summary(d, {"status": RunStatus.FAILED.value, "reason": f"{type(e).__name__}: {e}"})
        log.error(f"stacked training failed: {type(e).__name__}: {e} (traceback in each job's error.txt)")
        sys.exit(1)
    for d, r in zip(run_dirs, results):
        log.info(job_result_line(d.name, r.summary))
    stopped = [r for r in results if r.status == RunStatus.INTERRUPTED]
    if stopped:  # a signal stopped the stack: every run saved a checkpoint
        log.warning(f"{stopped[0].summary['reason']}: {len(stopped)} runs saved a checkpoint; to continue, run the "
                    f"same command with hydra.sweep.dir={run_dirs[0].parent} trainer.resume=auto")
        sys.exit(128 + signal.Signals[stopped[0].summary["reason"].split()[-1]])


def job_result_line(name: str, summary: dict | None) -> str:
    """One job's line of the table that ends a sweep: its folder, how it ended, its final val loss
    or the reason."""
    if summary is None:
        return f"{name}: no summary.json (stopped before it ended, or still running)"
    status = summary.get("status")
    if status == RunStatus.COMPLETED.value and summary.get("final_val_loss") is not None:
        return f"{name}: {status}; final val loss {summary['final_val_loss']:.4f}"
    return f"{name}: {status}; {summary.get('reason', '')}"


def sweep_result_lines(sweep_dir: Path) -> list[str]:
    """job_result_line of every job folder of a sweep folder (those with a .hydra/), in job order."""
    import json

    def number(d: Path) -> tuple:
        head = d.name.partition("_")[0]
        return (int(head), d.name) if head.isdigit() else (10**9, d.name)

    lines = []
    for d in sorted((d for d in Path(sweep_dir).iterdir() if (d / ".hydra").is_dir()), key=number):
        try:
            summary = json.loads((d / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
        lines.append(job_result_line(d.name, summary))
    return lines


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - Hydra 1.3 has it
    Callback = object


class SweepSummary(Callback):
    """Ends a sweep with one line per job (conf/hydra/default.yaml registers it): what the stacked
    launcher prints, for every launcher. The stacked jobs are trained after Hydra's sweep ends
    (train_stacked_jobs prints their lines)."""

    def on_multirun_end(self, config, **kwargs) -> None:
        if OmegaConf.select(config, "hydra.runtime.choices")["hydra/launcher"] == "stacked":
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        lines = sweep_result_lines(sweep_dir)
        if lines:
            print(f"sweep {sweep_dir}: {len(lines)} jobs", flush=True)
            for line in lines:
                print(f"  {line}", flush=True)


def _ranks_from_submitit() -> bool:
    """True in a job of hydra-submitit-launcher. One with several tasks (hydra/launcher=slurm
    with gpus_per_node > 1) runs one task per GPU: make each a DDP rank, with the variables
    torchrun would set."""
    if not ("SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_LOCAL_JOB_ID" in os.environ):
        return False
    import submitit

    if "WORLD_SIZE" not in os.environ and submitit.JobEnvironment().num_tasks > 1:
        # Each rank picks its GPU from LOCAL_RANK among all the job's GPUs: keep them visible.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def _requeue(signum: signal.Signals, result) -> None:
    """Submitit's checkpoint/requeue protocol: Slurm sends SIGUSR2 before the time limit or a
    preemption; the trainer has stopped at a step boundary and saved a checkpoint; now submitit's
    own handler (restored when the trainer returned) resubmits the job with the same arguments and
    exits. The requeued job runs with trainer.resume=auto and continues from that checkpoint."""
    handler = signal.getsignal(signum)
    if not callable(handler):
        return  # no submitit handler installed: stop like any interrupted run
    log.warning(f"{result.summary['reason']} at step {result.summary['step']}; checkpoint {result.checkpoint}; "
                "requeuing the job through submitit, it will continue from that checkpoint")
    handler(signum, None)

def claim_run_folders(args, cfg: DictConfig, job_dirs: list[Path], extras: list[str] = ()) -> None:
    """The last step of the precheck, once every check has passed: take the lock of the run folder
    (or of each job folder of a grid sweep) in this, the launching process, before Hydra writes
    .hydra/ and its log there (minigpt/run/folder.py, claim_early, says why the claim is here).
    Under torchrun, rank 0 claims for all ranks. A folder whose name Hydra gives only at run
    time (a time stamp, a search's trials) is new: its job's trainer claims it."""
    from minigpt.run.folder import claim_early

    if int(os.environ.get("RANK", "0")) > 0:
        return
    mode = OmegaConf.select(cfg, "hydra.mode")
    if args.multirun or getattr(mode, "name", None) == "MULTIRUN":
        folders = job_dirs
    else:
        cfg = copy.deepcopy(cfg)
        for extra in extras:  # the precheck's own choice of folder (under torchrun: one for every rank)
            key, _, value = extra.partition("=")
            if key == "hydra.run.dir":
                OmegaConf.update(cfg, key, value)
        raw = OmegaConf.to_container(cfg.hydra.run, resolve=False).get("dir", "")
        if "${now:" in str(raw):  # a time stamp Hydra resolves at run time (to another second, maybe):
            folders = []          # a new folder, which its trainer claims
        else:
            folders = [Path(str(OmegaConf.select(cfg.hydra, "run.dir")))]
    for folder in folders:
        claim_early(folder)
