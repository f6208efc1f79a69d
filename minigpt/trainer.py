"""One run (`Trainer`: its data, model, optimizer, plan, monitor, records and checkpoints) and
the loop that trains one run or many (`fit`, driving a stepper: stepper.py or stack.py).

At the boundary before step s the model has had s updates: evaluation at s, checkpoints at s
and a stop requested by a signal all happen there, so a checkpoint of step s resumes with
update s and recomputes everything else from the step.

On a GPU nothing in the loop waits for the device: records reach the host in batches
(minigpt/records.py). Evaluation, checkpoints and the optional spike-skipping mitigation are
the only synchronisation points.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from minigpt.checkpoint import (check_compatible, checkpoint_path, continue_records, find_resume, is_branch,
                                load_states, prune_checkpoints, save_checkpoint)
from minigpt.config import Config
from minigpt.data import Batches, prepare_data
from minigpt.metrics import MetricsLogger, RunResult, RunStatus, write_summary
from minigpt.model import GPT, GPTConfig
from minigpt.monitor import Monitor
from minigpt.optim import build_optimizer
from minigpt.perf import flops_per_token, peak_flops
from minigpt.plan import RunPlan
from minigpt.plots import plot_schedule_curve
from minigpt.records import RecordSchema, StepRecords
from minigpt.runtime import Runtime, StopSignals, rng_state
from minigpt.sharpness import SharpnessProbe
from minigpt.stepper import ModelStepper

log = logging.getLogger("minigpt")


class Trainer:
    """One run. `checkpoints=False` writes none (the LR range test trains a throwaway copy).

    `watchers` are called with every record once it reaches the host; one that returns a
    reason (a string) ends the run at the next step boundary with status `stopped`.
    """

    def __init__(self, cfg: Config, run_dir: Path, quiet: bool = False, checkpoints: bool = True):
        self.cfg, self.run_dir, self.checkpoints = cfg, Path(run_dir), checkpoints
        self.watchers: list = []
        self.stop_reason: str | None = None
        tc, mc = cfg.trainer, cfg.model
        self.say = (lambda msg: None) if quiet else log.info
        self.runtime = Runtime.start(tc)
        self.ddp, self.device, self.precision = self.runtime.ddp, self.runtime.device, self.runtime.precision
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A resume is checked against the checkpoint's config before any data or model work.
        found = find_resume(self.run_dir, tc.resume, cfg.to_dict(), self.say) if tc.resume else None

        # Data: the main rank builds the cache, the others wait and read it.
        if self.ddp.is_main:
            self.data = prepare_data(cfg.data, log=self.say, progress=tc.progress)
        if self.ddp.enabled:
            dist.barrier()
        if not self.ddp.is_main:
            self.data = prepare_data(cfg.data, log=lambda m: None, progress=False)
        meta = self.data.meta

        self.model_config = GPTConfig.build(mc, meta["vocab_size"])
        torch.manual_seed(cfg.seed)
        self.model = GPT(self.model_config).to(self.device)  # the uncompiled module: checkpoints use it
        self.model.record_logz = cfg.monitor.logz
        for block in self.model.transformer.h:
            block.attn.record_max_logit = cfg.monitor.max_attn_logit
        torch.manual_seed(cfg.seed + self.ddp.rank)  # dropout differs between ranks
        self.step_model, self.eval_model = self.runtime.wrap(self.model, tc)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

        # The run plan (batch, length, schedule, peak LR), checked before any compute is spent.
        self.plan = RunPlan.build(cfg, self.ddp.world_size, meta["train_tokens"])
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device, self.plan.peak_lr)
        self.total_steps = self.plan.total_steps
        self.train_batches = Batches(self.data.train, mc.block_size, tc.micro_batch_size, cfg.seed, self.device, "train")
        self.val_batches = Batches(self.data.val, mc.block_size, tc.micro_batch_size, cfg.seed, self.device,
                                   "validation")
        self.monitor = Monitor(cfg.monitor, self.total_steps, meta.get("unigram_entropy_val"))
        self.sharpness = None
        if cfg.monitor.sharpness_every:
            # One fixed training batch (that of step 0) for every measurement.
            self.sharpness = SharpnessProbe(cfg.monitor.sharpness_every, cfg.monitor.sharpness_iters,
                                            self.train_batches.train_batch(0, 0), seed=cfg.seed,
                                            until=cfg.monitor.sharpness_until)
        self.flops_per_token = flops_per_token(self.model.num_params(), mc.n_layer, mc.n_embd, mc.block_size)
        self.peak_flops = peak_flops(self.device)
        self.flush_every = tc.flush_every or (32 if self.device.type == "cuda" else 1)

        # Progress through the run; a resume overwrites these.
        self.step, self.tokens_seen = 0, 0
        self.val_history: list[tuple[int, float]] = []
        self.wandb_id: str | None = None
        self.elapsed_before = 0.0  # training seconds of earlier sessions of a resumed run
        self.resumed_from: Path | None = None
        self.branched_from: Path | None = None
        self.saved_step: int | None = None  # the step of the newest checkpoint of this run
        if tc.resume:
            self.resume(found)

        self.records = StepRecords(RecordSchema.of_run(
            cfg, self.scaler is not None, self.flops_per_token,
            self.peak_flops * self.ddp.world_size if self.peak_flops else None), self.device)
        self.flush_seconds = 0.0  # host time spent handing records over (scripts/bench.py reads it)
        self.val_at: dict[int, float] = {}
        self.last_record: dict = {}
        self.t0 = time.time()

    def run(self) -> RunResult:
        return fit([self], ModelStepper(self))[0]

    # --- the parts fit() calls ---

    def open(self, shared_process: bool = False) -> None:
        """Announce the run and open its metrics (a stack's runs share one process, no bars)."""
        cfg = self.cfg
        self.say(f"device: {self.device}, precision {self.precision}, "
                 f"{self.ddp.world_size} rank(s), compile {'on' if cfg.trainer.compile else 'off'}")
        self.say(f"model: {self.model.describe()}")
        for line in self.plan.lines(cfg.trainer.micro_batch_size, self.ddp.world_size, self.data.meta["train_tokens"]):
            self.say(line)
        if self.ddp.is_main:
            plot_schedule_curve(self.plan.schedule, self.plan.peak_lr, self.run_dir / "schedule.png")
        self.metrics = MetricsLogger(
            self.run_dir, cfg.logger, config=cfg.to_dict(), total_steps=self.total_steps, start_step=self.step,
            wandb_id=self.wandb_id, progress=cfg.trainer.progress and not shared_process, enabled=self.ddp.is_main,
            run_name=cfg.run_name, shared_process=shared_process)
        self.wandb_id = self.metrics.wandb_id

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over the fixed validation windows (split across ranks)."""
        self.model.eval()
        n = self.cfg.trainer.eval_iters
        total = torch.zeros(2, device=self.device, dtype=torch.float64)  # loss sum, batch count
        for i in range(self.ddp.rank, n, self.ddp.world_size):
            x, y = self.val_batches.eval_batch(i)
            with self.runtime.autocast():
                _, loss = self.eval_model(x, y)
            total[0] += loss.double()
            total[1] += 1
        if self.ddp.enabled:
            dist.all_reduce(total)
        self.model.train()
        return float(total[0] / total[1])

    def flush(self, wait: bool = False) -> None:
        """Write the records whose values reached the host (all pending ones when `wait`)."""
        start = time.perf_counter()
        for record in self.records.flush(wait):
            if record["step"] in self.val_at:
                record["val/loss"] = self.val_at[record["step"]]
                self.val_history.append((record["step"], self.val_at.pop(record["step"])))
            self.monitor.observe(record)
            self.metrics.log(record)
            for watch in self.watchers:
                self.stop_reason = self.stop_reason or watch(record)
            self.last_record = record
        self.metrics.flush()
        self.flush_seconds += time.perf_counter() - start

    def ended(self) -> RunStatus | None:
        """Diverged (when that stops the run) or stopped by a watcher: the run ends here."""
        if self.monitor.verdict.diverged and self.cfg.monitor.stop_on_divergence:
            return RunStatus.DIVERGED
        return RunStatus.STOPPED if self.stop_reason else None

    def resumed_here(self) -> bool:
        """Whether the newest checkpoint is of the current step (nothing new to save)."""
        return self.saved_step == self.step

    # --- checkpoints ---

    def save(self) -> Path | None:
        if not self.ddp.is_main:
            return None
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "rng": rng_state(),
            "monitor": self.monitor.state_dict(),
            "val_history": [list(v) for v in self.val_history],
            "config": self.cfg.to_dict(),
            "model_config": vars(self.model_config).copy(),
            "data_key": self.data.cache_dir.name,
            "tokenizer": (self.data.cache_dir / "tokenizer.json").read_text(),  # samplers need no data cache
            "wandb_id": self.wandb_id,
            "elapsed": self.elapsed_before + (time.time() - self.t0),
        }
        path = save_checkpoint(state, checkpoint_path(self.run_dir, self.step))
        prune_checkpoints(self.run_dir, self.cfg.trainer.keep_checkpoints)
        self.saved_step = self.step
        self.say(f"checkpoint: step {self.step} -> {path}")
        return path

    def resume(self, found: tuple[Path, dict] | None) -> None:
        path, state = found if found else (None, None)
        if state is not None:
            check_compatible(state, path, vars(self.model_config), self.data.cache_dir.name)
            load_states(state, model=self.model, optimizer=self.optimizer, scaler=self.scaler, monitor=self.monitor)
            self.step, self.tokens_seen = state["step"], state["tokens_seen"]
            self.val_history = [tuple(v) for v in state["val_history"]]
            self.elapsed_before = state.get("elapsed", 0.0)
            self.resumed_from, self.saved_step = path, self.step
            self.branched_from = path if is_branch(path, self.run_dir) else None
            self.wandb_id = None if self.branched_from else state.get("wandb_id")
        if self.ddp.is_main:
            continue_records(self.run_dir, path, self.step, self.say)

    # --- the end ---

    def finish(self, status: RunStatus, checkpoint: Path | None, wall: float, stop_signal: int | None = None,
               **extra) -> RunResult:
        summary = self.summary(status, wall, checkpoint, stop_signal)
        summary.update(extra)
        if self.ddp.is_main:
            write_summary(self.run_dir, summary)
        self.metrics.close(summary)
        final = summary["final_val_loss"] if status == RunStatus.COMPLETED else math.inf
        return RunResult(status, final, summary, self.run_dir, checkpoint)

    def summary(self, status: RunStatus, wall: float, ckpt: Path | None, stop_signal: int | None = None) -> dict:
        verdict = self.monitor.verdict
        vals = [v for _, v in self.val_history]
        final = self.val_history[-1][1] if self.val_history and status == RunStatus.COMPLETED else None
        entropy = self.data.meta.get("unigram_entropy_val")
        train_seconds = self.elapsed_before + (time.time() - self.t0)
        reasons = {RunStatus.DIVERGED: verdict.reason, RunStatus.STOPPED: self.stop_reason,
                   RunStatus.INTERRUPTED: f"stopped by {signal.Signals(stop_signal).name}" if stop_signal else ""}
        summary = {
            "status": status.value,
            "reason": reasons.get(status, ""),
            "diverged_step": verdict.step if status == RunStatus.DIVERGED else None,
            "step": self.step,
            "total_steps": self.total_steps,
            "final_val_loss": final,
            "best_val_loss": min(vals) if vals else None,
            "initial_val_loss": self.val_history[0][1] if self.val_history and self.val_history[0][0] == 0 else None,
            "unigram_entropy_val": entropy,
            "val_loss_over_unigram_entropy": round(final / entropy, 4) if final and entropy else None,
            "final_train_loss": self.last_record.get("train/loss"),
            "tokens": self.tokens_seen,
            "peak_lr": self.plan.peak_lr,
            "configured_lr": self.cfg.optim.lr,
            "schedule": self.plan.schedule.name,
            "plan": self.plan.describe(),
            "wall_time_s": round(wall, 2),
            "train_time_s": round(train_seconds, 2),
            "tok_per_s": round(self.tokens_seen / train_seconds, 1) if train_seconds > 0 else None,
            "device": self.runtime.device_name(),
            "precision": self.precision,
            "world_size": self.ddp.world_size,
            "n_params": self.model.num_params(),
            "checkpoint": str(ckpt) if ckpt else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "branched_from": str(self.branched_from) if self.branched_from else None,
        }
        summary.update(self.monitor.summary())
        return summary


def train(cfg: Config, run_dir: Path, quiet: bool = False) -> RunResult:
    return Trainer(cfg, run_dir, quiet=quiet).run()


def advance(stepper) -> None:
    """One update of the stepper's runs, then the periodic hand-off of their records to the host:
    the body of fit()'s loop, also what scripts/bench.py times."""
    stepper.train_step()
    if stepper.step % stepper.runs[0].flush_every == 0:
        for r in stepper.runs:
            r.flush()


def fit(runs: list[Trainer], stepper, shared_process: bool = False, **extra) -> list[RunResult]:
    """Train `runs` (one, or a stack sharing their length and intervals) to the end, with
    `stepper` doing each update; `extra` goes into every summary. A run that diverges or is
    stopped by a watcher is finished at once and dropped from the stepper; the others go on."""
    first, tc = runs[0], runs[0].cfg.trainer
    results: dict[int, RunResult] = {}
    for r in runs:
        r.open(shared_process)

    def end(r: Trainer, status: RunStatus, stop_signal: int | None = None) -> None:
        ckpt = None
        if status in (RunStatus.COMPLETED, RunStatus.INTERRUPTED) and r.checkpoints:
            ckpt = r.resumed_from if r.resumed_here() else stepper.save(r)
        results[id(r)] = r.finish(status, ckpt, time.time() - t_start, stop_signal, **extra)
        stepper.drop(r)

    t_start = time.time()
    for r in runs:
        r.t0 = t_start  # training time starts now for all, not at each run's announcement
    try:
        with StopSignals(first.ddp) as stop:
            while stepper.runs and stepper.step < first.total_steps:
                step = stepper.step
                if step % tc.eval_interval == 0:
                    for r, v in zip(list(stepper.runs), stepper.evaluate()):
                        r.val_at[step] = v
                if stop.stop is not None:
                    break
                if first.checkpoints and tc.ckpt_interval and step % tc.ckpt_interval == 0 and step > 0:
                    for r in stepper.runs:
                        if not r.resumed_here():
                            r.flush(wait=True)
                            stepper.save(r)
                advance(stepper)
                if stepper.step % first.flush_every == 0:
                    stop.agree(first.device)  # the ranks flush at the same steps: they agree there
                for r in list(stepper.runs):
                    if (status := r.ended()) is not None:
                        r.flush(wait=True)
                        end(r, status)
            for r in list(stepper.runs):
                r.flush(wait=True)
                if r.ended() == RunStatus.DIVERGED:  # noticed when the last records landed
                    end(r, RunStatus.DIVERGED)
            if stepper.runs and stop.stop is None:
                for r, v in zip(list(stepper.runs), stepper.evaluate()):
                    r.val_history.append((r.step, v))
                    r.metrics.log({"step": r.step, "val/loss": v, "train/tokens": r.tokens_seen})
            status = RunStatus.COMPLETED if stop.stop is None else RunStatus.INTERRUPTED
            for r in list(stepper.runs):
                end(r, status, stop.stop)
    finally:
        for r in runs:  # a crash: close what is still open, as failed
            if id(r) not in results and hasattr(r, "metrics"):
                summary = {"status": RunStatus.FAILED.value, "step": r.step}
                if r.ddp.is_main:
                    write_summary(r.run_dir, summary)
                r.metrics.close(summary, failed=True)
    return [results[id(r)] for r in runs]
