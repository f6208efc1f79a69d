"""summary.json: what a run ended with, in one flat dict (docs/reading_a_run.md lists the fields)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from minigpt.run.metrics import FORMAT_VERSION, RunStatus


def run_summary(run, status: RunStatus, wall: float, ckpt: Path | None, stop_signal: int | None = None) -> dict:
    """The summary of `run` (a trainer.Trainer) ending with `status` after `wall` seconds."""
    verdict = run.monitor.verdict
    vals = [v for _, v in run.val_history]
    final = run.val_history[-1][1] if run.val_history and status == RunStatus.COMPLETED else None
    entropy = run.data.meta.get("unigram_entropy_val")
    train_seconds = run.elapsed_before + (time.time() - run.t0)
    reasons = {RunStatus.DIVERGED: verdict.reason, RunStatus.STOPPED: run.stop_reason,
               RunStatus.INTERRUPTED: f"stopped by {signal.Signals(stop_signal).name}" if stop_signal else ""}
    summary = {
        "format_version": FORMAT_VERSION,  # as write_summary puts it in the file: the result and the file agree
        "status": status.value,
        "reason": reasons.get(status, ""),
        "diverged_step": verdict.step if status == RunStatus.DIVERGED else None,
        "step": run.step,
        "total_steps": run.total_steps,
        "final_val_loss": final,  # cross-entropy; with the z-loss on, its term is final_val_z_loss
        # the final evaluation's standard error over its batches (val/loss_stderr), as eval_only's summary
        "val_loss_stderr": run.val_stderr if final is not None else None,
        "final_val_z_loss": run.val_z_loss if final is not None and run.cfg.model.z_loss > 0 else None,
        "best_val_loss": min(vals) if vals else None,
        # optim.ema: the weight average's validation loss (None without one)
        "final_val_loss_ema": run.val_history_ema[-1][1] if final is not None and run.val_history_ema else None,
        "best_val_loss_ema": min(v for _, v in run.val_history_ema) if run.val_history_ema else None,
        "initial_val_loss": run.val_history[0][1] if run.val_history and run.val_history[0][0] == 0 else None,
        "unigram_entropy_val": entropy,
        "val_loss_over_unigram_entropy": round(final / entropy, 4) if final and entropy else None,
        "final_train_loss": run.last_record.get("train/loss"),
        "tokens": run.tokens_seen,
        "peak_lr": run.plan.peak_lr,
        "configured_lr": run.cfg.optim.lr,
        "schedule": run.plan.schedule.name,
        "plan": run.plan.describe(),
        "wall_time_s": round(wall, 2),
        "train_time_s": round(train_seconds, 2),
        "tok_per_s": round(run.tokens_seen / train_seconds, 1) if train_seconds > 0 else None,
        "device": run.runtime.device_name(),
        "precision": run.precision,
        "world_size": run.ddp.world_size,
        "n_params": run.model.num_params(),
        "checkpoint": str(ckpt) if ckpt else None,
        "resumed_from": str(run.resumed_from) if run.resumed_from else None,
        "branched_from": str(run.branched_from) if run.branched_from else None,
        "init_from": run.init_origin,  # trainer.init_from: {path, step, config_hash} of the weights it began with
    }
    summary.update(run.monitor.summary())
    return summary
