"""The training loop.

One optimizer update ("step") at a time:

    lr = peak * schedule(step)                     # the schedule sees optimizer steps only
    for each micro-batch: forward, backward (loss / accumulation), no DDP sync until the last
    clip the global gradient norm, optimizer step, zero the gradients
    record: step, lr, mean and max micro-batch loss, grad norm, tokens, throughput, spikes

At the boundary before step s the model has had s updates: evaluation at s, checkpoints at s
and a stop requested by a signal all happen there, so a checkpoint of step s resumes with
update s and recomputes everything else from the step.

On a GPU nothing in the loop waits for the device: the per-step values stay on the GPU and
are copied to the host in batches (every `trainer.flush_every` steps) without blocking; the
monitor and the loggers see them when the copy has landed. Evaluation, checkpoints and the
optional spike-skipping mitigation are the only synchronisation points.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from minigpt.checkpoint import (CHECKPOINT_DIR, FIXED_MODEL_KEYS, checkpoint_path, checkpoint_step,
                                list_checkpoints, load_checkpoint, newest_intact_checkpoint, prune_checkpoints,
                                resume_config_changes, save_checkpoint, set_aside_damaged)
from minigpt.config import Config
from minigpt.data import Batches, prepare_data
from minigpt.errors import UserError
from minigpt.metrics import (SUMMARY_FILE, UNREADABLE_FILE, MetricsLogger, read_metrics, truncate_metrics, write_metrics,
                             write_summary)
from minigpt.model import GPT, GPTConfig
from minigpt.monitor import Monitor
from minigpt.optim import build_optimizer
from minigpt.sharpness import SharpnessProbe, stability_threshold
from minigpt.perf import flops_per_token, peak_flops
from minigpt.plan import RunPlan
from minigpt.run_folder import RunFolderLock, check_run_folder, probe_writable, set_aside_run

log = logging.getLogger("minigpt")

# SIGUSR2 is submitit's preemption / time-limit signal: under hydra/launcher=slurm the job then
# requeues itself (train.py) and continues from the checkpoint saved at the stop.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class RunResult:
    status: str  # completed | diverged | interrupted | stopped (by a watcher)
    final_val_loss: float  # inf unless completed
    summary: dict
    run_dir: Path
    checkpoint: Path | None = None


# --- device, precision, distribution --------------------------------------------------------


@dataclass
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Distributed:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        use_cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Distributed(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def resolve_device(name: str, ddp: Distributed) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but no CUDA GPU is visible (torch.cuda.is_available() is False); "
                        "use trainer.device=cpu or trainer.device=auto")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(ddp.local_rank)
        return torch.device("cuda", ddp.local_rank)
    return torch.device("cpu")


def check_compile_backend(tc) -> None:
    """An unknown torch.compile backend fails only when the model first runs, after the data is
    prepared: refuse it up front. (The mode is checked with the config's other values.)"""
    if not tc.compile:
        return
    import torch._dynamo

    if tc.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):  # debug backends included
        import difflib

        usual = torch._dynamo.list_backends()
        close = difflib.get_close_matches(tc.compile_backend, usual, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"trainer.compile_backend: unknown torch.compile backend {tc.compile_backend!r}{hint}; "
                        f"valid: {', '.join(usual)}")


def resolve_precision(name: str, device: torch.device) -> str:
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if name == "auto":
            return "bf16" if bf16_ok else "fp16"
        if name == "bf16" and not bf16_ok:
            raise UserError(f"trainer.precision=bf16 but {torch.cuda.get_device_name(device)} has no bf16 support; "
                            "use trainer.precision=fp16 or fp32")
        return name
    if name == "fp16":
        raise UserError("trainer.precision=fp16 needs a CUDA GPU (on the CPU there is no fp16 loss scaling); "
                        "use trainer.precision=fp32 or bf16 on the CPU")
    return "fp32" if name == "auto" else name


# --- the trainer ----------------------------------------------------------------------------


@dataclass
class _Pending:
    """Host-side facts of a step whose device values have not reached the host yet."""

    step: int
    lr: float
    beta1: float | None
    tokens: int
    batch_size: int
    skipped: bool
    seconds: float | None  # host-measured duration; None on CUDA, where the events below time it
    events: tuple | None  # (start, end) CUDA events around the step's work


@dataclass
class _Inflight:
    steps: list[_Pending]
    values: torch.Tensor  # (n_steps, n_fields), on the host once `done` has completed
    done: object  # a CUDA event, or None on the CPU


class Trainer:
    """One run. `checkpoints=False` writes none (the LR range test trains a throwaway copy).

    `watchers` are called with every record once it reaches the host; one that returns a
    reason (a string) ends the run at the next step boundary with status `stopped`.
    """

    def __init__(self, cfg: Config, run_dir: Path, quiet: bool = False, checkpoints: bool = True):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.checkpoints = checkpoints
        self.watchers: list = []
        self.stop_reason: str | None = None
        tc = cfg.trainer
        self.say = (lambda msg: None) if quiet else log.info

        self.ddp = setup_distributed(tc.device)
        self.device = resolve_device(tc.device, self.ddp)
        self.precision = resolve_precision(tc.precision, self.device)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # leftover fp32 matmuls on tensor cores
            torch.backends.cudnn.allow_tf32 = True
        check_compile_backend(tc)
        # The folder is this run's alone for its whole life (minigpt/run_folder.py): locked, and
        # checked for another run before anything is written into it.
        self.lock = None
        if self.ddp.is_main:
            probe_writable(self.run_dir, "hydra.run.dir")  # creates it
            self.lock = RunFolderLock(self.run_dir).acquire()
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        cfg, tc = self.cfg, self.cfg.trainer
        if self.ddp.is_main:
            if self.lock.took_over:
                self.say(f"run folder: took over the lock left by {self.lock.took_over} (no longer running)")
            if self.lock.unsupported:
                self.say(f"run folder: no lock on {self.run_dir} ({self.lock.unsupported}); make sure no other process "
                         "writes into it")
            check_run_folder(self.run_dir, tc.resume, tc.overwrite)
            if tc.overwrite:
                moved = set_aside_run(self.run_dir)
                if moved:
                    self.say(f"run folder: trainer.overwrite=true: the run {self.run_dir} held moved to {moved}")
            if self.checkpoints:
                probe_writable(self.run_dir / CHECKPOINT_DIR, "hydra.run.dir")
            probe_writable(Path(cfg.data.cache_dir), "data.cache_dir")
        # A resume is checked against the checkpoint's config before any data or model work.
        found = self._load_resume(tc.resume) if tc.resume else None

        # Data: the main rank builds the cache, the others wait and read it.
        if self.ddp.is_main:
            self.data = prepare_data(cfg.data, log=self.say, progress=tc.progress)
        if self.ddp.enabled:
            dist.barrier()
        if not self.ddp.is_main:
            self.data = prepare_data(cfg.data, log=lambda m: None, progress=False)
        meta = self.data.meta
        # Every context window must fit in the splits: checked before a model of that context is built.
        self.train_batches = Batches(self.data.train, cfg.model.block_size, tc.micro_batch_size, cfg.seed, self.device,
                                     "train")
        self.val_batches = Batches(self.data.val, cfg.model.block_size, tc.micro_batch_size, cfg.seed, self.device,
                                   "validation")

        # Model.
        mc = cfg.model
        self.model_config = GPTConfig(
            vocab_size=meta["vocab_size"], block_size=mc.block_size, n_layer=mc.n_layer, n_head=mc.n_head,
            n_embd=mc.n_embd, dropout=mc.dropout, bias=mc.bias, norm_position=mc.norm_position,
            qk_layernorm=mc.qk_layernorm, z_loss=mc.z_loss,
        )
        torch.manual_seed(cfg.seed)
        self.model = GPT(self.model_config).to(self.device)  # the uncompiled module: checkpoints use it
        self.model.record_logz = cfg.monitor.logz
        for block in self.model.transformer.h:
            block.attn.record_max_logit = cfg.monitor.max_attn_logit
        torch.manual_seed(cfg.seed + self.ddp.rank)  # dropout differs between ranks
        self.step_model = self.model
        if tc.compile:
            self.step_model = torch.compile(self.model, backend=tc.compile_backend, mode=tc.compile_mode)
        self.eval_model = self.step_model  # evaluation needs no DDP wrapper: it syncs nothing
        if self.ddp.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.step_model = DistributedDataParallel(
                self.step_model, device_ids=[self.ddp.local_rank] if self.device.type == "cuda" else None
            )
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

        # The run plan (batch, length, schedule, peak LR), checked before any compute is spent.
        self.plan = RunPlan.build(cfg, self.ddp.world_size, meta["train_tokens"])
        self.batches, self.total_steps, self.schedule = self.plan.batches, self.plan.total_steps, self.plan.schedule
        self.grad_accum, self.global_batch = self.plan.grad_accum, self.plan.global_batch
        self.tokens_per_step, self.peak_lr = self.plan.tokens_per_step, self.plan.peak_lr
        self.optimizer = build_optimizer(self.model, cfg.optim, self.device, self.peak_lr,
                                         (self.plan.beta1, self.plan.beta2, self.plan.eps))

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

        # Progress through the run; resume overwrites these.
        self.step = 0
        self.tokens_seen = 0
        self.val_history: list[tuple[int, float]] = []
        self.wandb_id: str | None = None
        self.elapsed_before = 0.0  # training seconds of earlier sessions of a resumed run
        self.resumed_from: Path | None = None
        self.branched_from: Path | None = None
        if tc.resume:
            self._resume(found)

        self.fields = ["loss", "loss_max", "grad_norm"]
        if self.scaler is not None:
            self.fields.append("scaler_skipped")
        for name, on in (("z_loss", cfg.model.z_loss > 0), ("update_ratio", cfg.monitor.update_ratio),
                         ("max_attn_logit", cfg.monitor.max_attn_logit),
                         ("logz", cfg.monitor.logz), ("sharpness", self.sharpness is not None)):
            if on:
                self.fields.append(name)
        self.pending: list[_Pending] = []
        self.pending_values: list[torch.Tensor] = []
        self.inflight: list[_Inflight] = []
        self.val_at: dict[int, float] = {}
        self.val_z_at: dict[int, float] = {}  # the z-loss term at the evaluations, when the z-loss is on
        self.val_z_loss: float | None = None
        self.stop_signal: int | None = None  # a stop all ranks agreed on
        self.signal_received: int | None = None  # a signal this process caught
        self.last_record: dict = {}

    # --- the run ---

    def run(self) -> RunResult:
        cfg, tc = self.cfg, self.cfg.trainer
        finished = self._finished_summary()
        if finished is not None:  # e.g. a Slurm requeue of a job that had completed: change nothing
            self.say(f"resume: the run in {self.run_dir} is complete (step {self.step} of {self.total_steps}); "
                     "nothing to do")
            self.close()
            return RunResult("completed", finished.get("final_val_loss"), finished, self.run_dir, self.resumed_from)
        try:
            self.begin_records()
            self._announce()
            self.metrics = MetricsLogger(
                self.run_dir, cfg.logger, config=cfg.to_dict(), total_steps=self.total_steps, start_step=self.step,
                wandb_id=self.wandb_id, progress=tc.progress, enabled=self.ddp.is_main, run_name=cfg.run_name,
            )
        except BaseException:
            self.close()
            raise
        self.wandb_id = self.metrics.wandb_id
        previous_handlers = self._install_signal_handlers()
        status, failed, ckpt = "completed", True, None
        t_start = time.time()
        try:
            while self.step < self.total_steps:
                if self.step % tc.eval_interval == 0:
                    self.val_at[self.step] = self.evaluate()
                    if self.val_z_loss is not None:
                        self.val_z_at[self.step] = self.val_z_loss
                if self._stop_requested():
                    status = "interrupted"
                    break
                if self.checkpoints and tc.ckpt_interval and self.step % tc.ckpt_interval == 0 and self.step > 0 and not self._resumed_here():
                    self._drain()
                    ckpt = self.save()
                self.advance()
                if self.monitor.verdict.diverged and cfg.monitor.stop_on_divergence:
                    status = "diverged"
                    break
                if self.stop_reason:
                    status = "stopped"
                    break
            self._drain()
            if status == "completed" and self.monitor.verdict.diverged and cfg.monitor.stop_on_divergence:
                status = "diverged"  # noticed when the last records landed
            if status == "completed":
                final = self.evaluate()
                self.val_history.append((self.step, final))
                record = {"step": self.step, "val/loss": final, "train/tokens": self.tokens_seen}
                if self.val_z_loss is not None:
                    record["val/z_loss"] = self.val_z_loss
                self.metrics.log(record)
            if status in ("completed", "interrupted") and self.checkpoints:
                ckpt = self.resumed_from if self._resumed_here() else self.save()
            failed = False
        finally:
            wall = time.time() - t_start
            summary = self._summary(status, wall, ckpt) if not failed else {"status": "failed", "step": self.step}
            if self.ddp.is_main:
                write_summary(self.run_dir, summary)
            self.metrics.close(summary, failed=failed)
            # Only now: a second signal while the summary is written is still just a request.
            self._restore_signal_handlers(previous_handlers)
            self.close()
        final_val = summary["final_val_loss"] if status == "completed" else math.inf
        return RunResult(status, final_val, summary, self.run_dir, ckpt)

    def advance(self) -> None:
        """One optimizer step, then the periodic hand-off of records to the host: the body of
        run()'s loop, also what scripts/bench.py times."""
        self.train_step()
        if self.step % self.flush_every == 0:
            self._flush(wait=False)

    def train_step(self) -> None:
        cfg, step = self.cfg, self.step
        lr, beta1 = self.plan.lr_at(step, self.tokens_seen)
        accum = self.batches.accum_at(self.tokens_seen)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]  # optim.lr_multipliers, on top of the schedule
            if beta1 is not None:
                group["betas"] = (beta1, group["betas"][1])

        start = time.perf_counter()
        events = None
        if self.device.type == "cuda":
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        loss_sum = torch.zeros((), device=self.device)
        loss_max = torch.full((), -math.inf, device=self.device)
        z_sum = torch.zeros((), device=self.device)
        z_loss_on = cfg.model.z_loss > 0
        for micro in range(accum):
            x, y = self.train_batches.train_batch(step, self.ddp.rank * accum + micro)
            last = micro == accum - 1
            sync = contextlib.nullcontext() if (last or not self.ddp.enabled) else self.step_model.no_sync()
            with sync:
                with self._autocast():
                    _, loss = self.step_model(x, y)
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss = loss.detach().float()
            if z_loss_on:  # the record's loss is the cross-entropy; the z term is recorded on its own
                z = self.model.z_term.float()
                z_sum += z
                loss = loss - z
            loss_sum += loss
            loss_max = torch.maximum(loss_max, loss)
        loss_mean = loss_sum / accum
        if self.ddp.enabled:  # the record holds the global batch's loss on every rank
            dist.all_reduce(loss_mean, op=dist.ReduceOp.SUM)
            loss_mean /= self.ddp.world_size
            dist.all_reduce(loss_max, op=dist.ReduceOp.MAX)

        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).float()

        skipped = cfg.monitor.skip_spikes and self.monitor.should_skip(loss_mean.item(), grad_norm.item())
        extras = {}
        if cfg.monitor.update_ratio:
            before = [p.detach().clone() for p in self.model.parameters()]
        if self.scaler is not None:
            # The scaler lowers its scale exactly when it found inf/NaN gradients and skipped the
            # update. No .item(): the comparison stays on the GPU. (With fused AdamW the skip
            # itself happens on the GPU too; GradScaler syncs only for non-fused optimizers.)
            scale_before = self.scaler._scale.clone()
            if not skipped:
                self.scaler.step(self.optimizer)
            self.scaler.update()
            extras["scaler_skipped"] = (self.scaler._scale < scale_before).float().squeeze()
        elif not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if cfg.monitor.update_ratio:
            params = list(self.model.parameters())
            delta = torch.stack([torch.linalg.vector_norm(p.detach() - b) for p, b in zip(params, before)]).norm()
            weight = torch.stack([torch.linalg.vector_norm(p.detach()) for p in params]).norm()
            extras["update_ratio"] = delta / weight
        if cfg.monitor.max_attn_logit:
            extras["max_attn_logit"] = torch.stack([b.attn.max_logit for b in self.model.transformer.h]).max()
        if cfg.monitor.logz:
            extras["logz"] = self.model.logz_mean.float()
        if z_loss_on:
            z_mean = z_sum / accum
            if self.ddp.enabled:
                dist.all_reduce(z_mean, op=dist.ReduceOp.SUM)
                z_mean /= self.ddp.world_size
            extras["z_loss"] = z_mean
        if self.sharpness is not None:  # after the update, with the preconditioner it used
            value = self.sharpness.measure(self.model, self.optimizer) if self.sharpness.due(step) else math.nan
            extras["sharpness"] = torch.tensor(value, device=self.device)

        values = [loss_mean, loss_max, grad_norm] + [extras[f] for f in self.fields[3:]]
        self.pending_values.append(torch.stack([v.reshape(()) for v in values]))
        if events is not None:
            events[1].record()
        seconds = None if events is not None else time.perf_counter() - start
        batch = accum * self.batches.quantum
        self.tokens_seen += batch * cfg.model.block_size
        self.pending.append(_Pending(step, lr, beta1, self.tokens_seen, batch, skipped, seconds, events))
        self.step += 1

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy over the fixed validation windows (split across ranks). With the
        z-loss on, its term is not part of it: it goes to self.val_z_loss (val/z_loss)."""
        self.model.eval()
        n = self.cfg.trainer.eval_iters
        total = torch.zeros(3, device=self.device, dtype=torch.float64)  # cross-entropy sum, batch count, z sum
        for i in range(self.ddp.rank, n, self.ddp.world_size):
            x, y = self.val_batches.eval_batch(i)
            with self._autocast():
                _, loss = self.eval_model(x, y, with_z_loss=False)
            total[0] += loss.double()
            total[1] += 1
            if self.cfg.model.z_loss > 0:
                total[2] += self.model.z_term.double()
        if self.ddp.enabled:
            dist.all_reduce(total)
        self.model.train()
        self.val_z_loss = float(total[2] / total[1]) if self.cfg.model.z_loss > 0 else None
        return float(total[0] / total[1])

    # --- records: device -> host, asynchronously ---

    def _flush(self, wait: bool) -> None:
        """Start copying the pending steps' values to the host; write records whose copy landed."""
        if self.pending:
            values = torch.stack(self.pending_values)
            if self.device.type == "cuda":
                host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
                host.copy_(values, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
                self.inflight.append(_Inflight(self.pending, host, done))
            else:
                self.inflight.append(_Inflight(self.pending, values, None))
            self.pending, self.pending_values = [], []
        while self.inflight and (wait or self.inflight[0].done is None or self.inflight[0].done.query()):
            item = self.inflight.pop(0)
            if item.done is not None:
                item.done.synchronize()
            self._write_records(item)
        if self.ddp.enabled:
            self._agree_on_stop()

    def _drain(self) -> None:
        self._flush(wait=True)

    def _write_records(self, item: _Inflight) -> None:
        rows = item.values.tolist()
        for p, row in zip(item.steps, rows):
            values = dict(zip(self.fields, row))
            seconds = p.seconds if p.events is None else p.events[0].elapsed_time(p.events[1]) / 1000
            tok_per_s = p.batch_size * self.cfg.model.block_size / max(seconds, 1e-9)
            record = {
                "step": p.step,
                "train/lr": p.lr,
                "train/loss": values["loss"],
                "train/loss_max": values["loss_max"],
                "train/grad_norm": values["grad_norm"],
                "train/clipped": bool(self.cfg.optim.grad_clip > 0 and values["grad_norm"] > self.cfg.optim.grad_clip),
                "train/tokens": p.tokens,
                "train/batch_size": p.batch_size,
                "perf/step_ms": round(seconds * 1000, 3),
                "perf/tok_per_s": round(tok_per_s, 1),
            }
            if self.peak_flops:
                record["perf/mfu"] = round(self.flops_per_token * tok_per_s / (self.peak_flops * self.ddp.world_size), 4)
            if p.beta1 is not None:
                record["train/beta1"] = p.beta1
            if self.plan.lr_scaling == "sqrt_adam":  # Adam's scaled hyperparameters, in every record
                record["train/beta2"] = self.plan.beta2
                record["train/eps"] = self.plan.eps
            if self.cfg.monitor.skip_spikes:
                record["train/skipped"] = p.skipped
            if "scaler_skipped" in values:
                record["train/scaler_skipped"] = bool(values["scaler_skipped"])
            for name in ("z_loss", "update_ratio", "max_attn_logit", "logz"):
                if name in values:
                    record[f"train/{name}"] = values[name]
            if self.sharpness is not None and self.sharpness.due(p.step):
                record["train/sharpness"] = values["sharpness"]
                record["train/sharpness_threshold"] = stability_threshold(
                    p.lr, p.beta1 if p.beta1 is not None else self.cfg.optim.beta1)
            if p.step in self.val_at:
                record["val/loss"] = self.val_at[p.step]
                if p.step in self.val_z_at:
                    record["val/z_loss"] = self.val_z_at.pop(p.step)
                self.val_history.append((p.step, self.val_at.pop(p.step)))
            self.monitor.observe(record)
            self.metrics.log(record)
            for watch in self.watchers:
                self.stop_reason = self.stop_reason or watch(record)
            self.last_record = record
        self.metrics.flush()

    # --- checkpoints and resume ---

    def save(self) -> Path | None:
        if not self.ddp.is_main:
            return None
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "rng": _rng_state(),
            "monitor": self.monitor.state_dict(),
            "val_history": [list(v) for v in self.val_history],
            "config": self.cfg.to_dict(),
            "model_config": vars(self.model_config).copy(),
            "data_key": self.data.cache_dir.name,
            "tokenizer": (self.data.cache_dir / "tokenizer.json").read_text(),  # samplers need no data cache
            "wandb_id": self.wandb_id,
            "elapsed": self.elapsed_before + (time.time() - self._t0 if hasattr(self, "_t0") else 0.0),
        }
        if hasattr(self, "metrics"):
            self.metrics.sync()  # the records up to this step are on the disk before the checkpoint is
        path = save_checkpoint(state, checkpoint_path(self.run_dir, self.step))
        prune_checkpoints(self.run_dir, self.cfg.trainer.keep_checkpoints)
        self._last_saved_step = self.step
        self.say(f"checkpoint: step {self.step} -> {path}")
        return path

    def _resumed_here(self) -> bool:
        return getattr(self, "_last_saved_step", None) == self.step

    def _load_resume(self, resume: str) -> tuple[Path, dict] | None:
        """The checkpoint to resume from and its state, after checking its config against ours.
        resume=auto takes the newest intact checkpoint, passing over damaged newer ones."""
        if resume == "auto":
            path, state, self.damaged = newest_intact_checkpoint(self.run_dir)
            for p, why in self.damaged:
                self.say(f"resume: skipped {p.name}: {why}")
            if path is None:
                return None
        else:
            path = Path(resume)
            state = load_checkpoint(path)
        changes = resume_config_changes(state.get("config", {}), self.cfg.to_dict(), path)
        if changes:
            self.say("resume: config changes from the checkpoint: " + "; ".join(changes))
        return path, state

    def _resume(self, found: tuple[Path, dict] | None) -> None:
        if found is None:
            self.say(f"resume: no checkpoint in {self.run_dir}; starting from step 0")
            return
        path, state = found
        if state["step"] > self.total_steps:
            raise UserError(f"trainer.resume: {path} is at step {state['step']}, past the end of this run "
                            f"({self.total_steps} steps); give a run length of at least {state['step']} steps "
                            "(trainer.max_steps / max_tokens / epochs)")
        self._check_compatible(state, path)
        self.model.load_state_dict(state["model"])
        saved_groups = [g.get("name") for g in state["optimizer"]["param_groups"]]
        groups = [g["name"] for g in self.optimizer.param_groups]
        if saved_groups != groups:
            raise UserError(f"trainer.resume: {path} has optimizer groups {saved_groups}, this run {groups} "
                            "(optim.lr_multipliers set or unset since); resume with the multipliers it was trained with")
        multipliers = [g["lr_mult"] for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, mult in zip(self.optimizer.param_groups, multipliers):  # this run's, not the checkpoint's
            group["lr_mult"] = mult
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.monitor.load_state_dict(state["monitor"])
        self.val_history = [tuple(v) for v in state["val_history"]]
        self.wandb_id = state.get("wandb_id")
        self.elapsed_before = state.get("elapsed", 0.0)
        _set_rng_state(state["rng"])
        self.resumed_from = path
        self._last_saved_step = self.step
        # A checkpoint of another run directory starts a branch (e.g. a WSD cooldown off a stable
        # phase): a run of its own, whose records begin with the parent's up to the branch step.
        parent_dir = path.resolve().parent.parent
        self.branched_from = path if parent_dir != self.run_dir.resolve() else None
        if self.branched_from:
            self.wandb_id = None

    def begin_records(self) -> None:
        """Make the run folder's records those of this run up to its first step, just before
        training: nothing earlier in the start-up can fail after an earlier run's records changed.

        A fresh start (or a resume that found no checkpoint) drops the records of an attempt that
        died before its first checkpoint; a resume drops the records after the checkpoint's step
        and the checkpoints past it (a rewind), so every step is recorded once and resume=auto
        never mixes two histories; a branch starts from the parent's records up to its step.
        Unreadable lines of metrics.jsonl are set aside, never dropped silently."""
        if not self.ddp.is_main:
            return
        for p, _ in getattr(self, "damaged", []):
            aside = set_aside_damaged(p)
            self.say(f"resume: damaged checkpoint {p.name} set aside as {aside.name}")
        if self.branched_from:
            parent = [r for r in read_metrics(self.branched_from.resolve().parent.parent) if r["step"] < self.step]
            write_metrics(self.run_dir, parent)
            self.say(f"branch: from {self.branched_from} at step {self.step}, a new run in {self.run_dir} "
                     f"({len(parent)} records of the parent copied)")
            return
        dropped, unreadable = truncate_metrics(self.run_dir, self.step)
        later = [p for p in list_checkpoints(self.run_dir) if checkpoint_step(p) > self.step]
        for p in later:
            p.unlink()
        notes = []
        if dropped:
            notes.append(f"dropped {dropped} records " + ("of an earlier attempt" if self.step == 0 else "after it"))
        if unreadable:
            notes.append(f"{unreadable} unreadable line{'s' if unreadable > 1 else ''} of metrics.jsonl set aside in "
                         f"{self.run_dir / UNREADABLE_FILE}")
        if later:
            notes.append(f"deleted {len(later)} later checkpoints")
        if self.resumed_from:
            self.say(f"resume: from {self.resumed_from} at step {self.step}" + "".join(f"; {n}" for n in notes))
        elif notes:
            self.say("records: " + "; ".join(notes))

    def _finished_summary(self) -> dict | None:
        """The summary of the completed run that this resume would only repeat, or None."""
        if not self.resumed_from or self.branched_from or self.step < self.total_steps:
            return None
        try:
            summary = json.loads((self.run_dir / SUMMARY_FILE).read_text())
        except (OSError, ValueError):
            return None
        done = isinstance(summary, dict) and summary.get("status") == "completed" and summary.get("step") == self.step
        return summary if done else None

    def close(self) -> None:
        """Release the run folder (the lock); run() does it when the run ends."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _check_compatible(self, state: dict, path: Path) -> None:
        """Refuse a checkpoint whose model or tokens differ (its config was compared already)."""
        saved = state.get("model_config", {})
        mine = vars(self.model_config)
        diff = [f"model.{k} ({saved.get(k)} -> {mine[k]})" for k in ("vocab_size", *FIXED_MODEL_KEYS)
                if saved.get(k) != mine[k]]
        if diff:
            raise UserError(f"trainer.resume: {path} is a checkpoint of another model: {', '.join(diff)}; "
                            "resume with the model config it was trained with")
        if state.get("data_key") != self.data.cache_dir.name:
            raise UserError(f"trainer.resume: {path} was trained on other tokens: the same data config now gives "
                            f"token cache {self.data.cache_dir.name}, not {state.get('data_key')} (the corpus files "
                            "changed?); resume with the corpus it was trained on")

    # --- signals ---

    def _install_signal_handlers(self):
        previous = {}

        def request_stop(signum, frame):
            if self.signal_received is not None:  # a second Ctrl-C: the stop is on its way, say so
                os.write(2, f"\n{signal.Signals(signum).name}: already stopping; the checkpoint is being saved at "
                            "the step boundary, then the run exits\n".encode())
            self.signal_received = signum
            if not self.ddp.enabled:  # under DDP the ranks first agree on it (_agree_on_stop)
                self.stop_signal = signum

        for sig in STOP_SIGNALS:
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return previous

    def _restore_signal_handlers(self, previous) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _stop_requested(self) -> bool:
        return self.stop_signal is not None

    def _agree_on_stop(self) -> None:
        """Under DDP every rank must stop at the same step: share any rank's signal. The ranks
        flush at the same steps, so all of them stop at the boundary after the same flush."""
        flag = torch.tensor([self.signal_received or 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            self.stop_signal = int(flag.item())

    # --- reporting ---

    def _announce(self) -> None:
        cfg, meta = self.cfg, self.data.meta
        self.say(f"device: {self.device}, precision {self.precision}, "
                 f"{self.ddp.world_size} rank(s), compile {'on' if cfg.trainer.compile else 'off'}")
        self.say(f"model: {self.model.num_params():,} parameters (without position embeddings), "
                 f"{cfg.model.n_layer} layers, {cfg.model.n_embd} wide, {cfg.model.n_head} heads, "
                 f"context {cfg.model.block_size}, vocabulary {self.model_config.vocab_size} "
                 f"(padded to {self.model_config.padded_vocab_size}), {cfg.model.norm_position}-LN"
                 + (", QK-layernorm" if cfg.model.qk_layernorm else "") + (f", z-loss {cfg.model.z_loss}" if cfg.model.z_loss else ""))
        for line in self.plan.lines(cfg.trainer.micro_batch_size, self.ddp.world_size, meta["train_tokens"]):
            self.say(line)
        if self.ddp.is_main:
            from minigpt.plots import plot_schedule_curve

            plot_schedule_curve(self.schedule, self.peak_lr, self.run_dir / "schedule.png")
        self._t0 = time.time()

    def _summary(self, status: str, wall: float, ckpt: Path | None) -> dict:
        verdict = self.monitor.verdict
        vals = [v for _, v in self.val_history]
        final = self.val_history[-1][1] if self.val_history and status == "completed" else None
        entropy = self.data.meta.get("unigram_entropy_val")
        train_seconds = self.elapsed_before + (time.time() - self._t0)
        summary = {
            "status": status,
            "reason": verdict.reason if status == "diverged" else (
                f"stopped by {signal.Signals(self.stop_signal).name}" if status == "interrupted" else
                self.stop_reason if status == "stopped" else ""),
            "diverged_step": verdict.step if status == "diverged" else None,
            "step": self.step,
            "total_steps": self.total_steps,
            "final_val_loss": final,  # cross-entropy; with the z-loss on, its term is final_val_z_loss
            "final_val_z_loss": self.val_z_loss if final is not None and self.cfg.model.z_loss > 0 else None,
            "best_val_loss": min(vals) if vals else None,
            "initial_val_loss": self.val_history[0][1] if self.val_history and self.val_history[0][0] == 0 else None,
            "unigram_entropy_val": entropy,
            "val_loss_over_unigram_entropy": round(final / entropy, 4) if final and entropy else None,
            "final_train_loss": self.last_record.get("train/loss"),
            "tokens": self.tokens_seen,
            "peak_lr": self.peak_lr,
            "configured_lr": self.cfg.optim.lr,
            "schedule": self.schedule.name,
            "plan": self.plan.describe(),
            "wall_time_s": round(wall, 2),
            "train_time_s": round(train_seconds, 2),
            "tok_per_s": round(self.tokens_seen / train_seconds, 1) if train_seconds > 0 else None,
            "device": str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device),
            "precision": self.precision,
            "world_size": self.ddp.world_size,
            "n_params": self.model.num_params(),
            "checkpoint": str(ckpt) if ckpt else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            "branched_from": str(self.branched_from) if self.branched_from else None,
        }
        summary.update(self.monitor.summary())
        return summary

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def train(cfg: Config, run_dir: Path, quiet: bool = False) -> RunResult:
    return Trainer(cfg, run_dir, quiet=quiet).run()


# --- helpers ----------------------------------------------------------------------------------


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": _to_plain(random.getstate())}
    np_state = np.random.get_state()
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(x):
    return [_to_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, list) else x
