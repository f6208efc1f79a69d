"""One optimizer update of one model: the stepper that `trainer.fit` drives for an ordinary run.

    plan.apply(optimizer, step, tokens)        # lr_at(step): the schedule sees optimizer steps only
    for each micro-batch: forward, backward (loss / accumulation), no DDP sync until the last
    clip the global gradient norm, optimizer step, zero the gradients
    hand the step's values (on the device) and facts (on the host) to the run's records

(Many tiny runs as one batched model: minigpt/run/stack.py, the other stepper.)
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from minigpt.optim import init_second_moment
from minigpt.run.records import Evaluation, PendingStep


class ModelStepper:
    """Steps one run (a Trainer) through its `StepParts` (state.py), taken when the stepper is
    built: a test or a tool may swap the run's model, optimizer or scaler before that."""

    def __init__(self, run):
        self.runs = [run]  # the runs still training: this one, until it ends
        self.parts = run.step_parts()
        # The sharpness record between measurements: made on the device once, so a step that
        # does not measure copies nothing host -> device (a pageable copy would wait for the GPU).
        self.no_sharpness = torch.full((), math.nan, device=self.parts.runtime.device)

    @property
    def step(self) -> int:
        return self.parts.progress.step

    def evaluate(self) -> list[Evaluation]:
        return [self.runs[0].evaluation()]

    def save(self, run) -> Path | None:
        return run.save()

    def drop(self, run) -> None:
        self.runs = [r for r in self.runs if r is not run]

    def train_step(self) -> None:
        r = self.parts
        cfg, progress, ddp, device = r.cfg, r.progress, r.runtime.ddp, r.runtime.device
        step = progress.step
        lr, beta1 = r.plan.apply(r.optimizer, step, progress.tokens)  # the schedule's LR (x lr_mult) into the groups
        accum = r.plan.batches.accum_at(progress.tokens)

        start = time.perf_counter()
        events = r.records.timing()  # CUDA events around the step's work; None on the CPU
        loss_sum = torch.zeros((), device=device)
        loss_max = torch.full((), -math.inf, device=device)
        z_sum = torch.zeros((), device=device)
        z_loss_on = cfg.model.z_loss > 0
        for micro in range(accum):
            x, y = r.train_batches.train_batch(step, ddp.rank * accum + micro)
            last = micro == accum - 1
            sync = contextlib.nullcontext() if (last or not ddp.enabled) else r.step_model.no_sync()
            with sync:
                with r.runtime.autocast():
                    # Only the loss is kept: a name for the logits would hold them (B x T x V,
                    # 3.3 GB at GPT-2 small and micro-batch 32 in bf16) through the backward.
                    loss = r.step_model(x, y)[1]
                scaled = loss / accum
                (r.scaler.scale(scaled) if r.scaler is not None else scaled).backward()
            loss = loss.detach().float()
            if z_loss_on:  # the record's loss is the cross-entropy; the z term is recorded on its own
                z = r.model.z_term.float()
                z_sum += z
                loss = loss - z
            loss_sum += loss
            loss_max = torch.maximum(loss_max, loss)
        loss_mean = loss_sum / accum
        if ddp.enabled:  # the record holds the global batch's loss on every rank
            dist.all_reduce(loss_mean, op=dist.ReduceOp.SUM)
            loss_mean /= ddp.world_size
            dist.all_reduce(loss_max, op=dist.ReduceOp.MAX)

        if r.scaler is not None:
            r.scaler.unscale_(r.optimizer)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(r.model.parameters(), clip).float()

        skipped = cfg.monitor.skip_spikes and r.monitor.should_skip(loss_mean.item(), grad_norm.item())
        if progress.second_moment_pending:  # GI-Adam: v_0 from this first (clipped) gradient, once
            init_second_moment(r.optimizer)
            progress.second_moment_pending = False
        extras = {}
        if cfg.monitor.update_ratio:
            before = [p.detach().clone() for p in r.model.parameters()]
        if r.scaler is not None:
            # The scaler lowers its scale exactly when it found inf/NaN gradients and skipped the
            # update. No .item(): the comparison stays on the GPU. (With fused AdamW the skip
            # itself happens on the GPU too; GradScaler syncs only for non-fused optimizers.)
            scale_before = r.scaler._scale.clone()
            if not skipped:
                r.scaler.step(r.optimizer)
            r.scaler.update()
            extras["scaler_skipped"] = (r.scaler._scale < scale_before).float().squeeze()
        elif not skipped:
            r.optimizer.step()
        r.optimizer.zero_grad(set_to_none=True)
        if r.ema is not None:  # optim.ema: one fused lerp on the device
            r.ema.update()
        if cfg.monitor.update_ratio:
            params = list(r.model.parameters())
            delta = torch.stack([torch.linalg.vector_norm(p.detach() - b) for p, b in zip(params, before)]).norm()
            weight = torch.stack([torch.linalg.vector_norm(p.detach()) for p in params]).norm()
            extras["update_ratio"] = delta / weight
        if cfg.monitor.max_attn_logit:
            extras["max_attn_logit"] = torch.stack([b.attn.max_logit for b in r.model.transformer.h]).max()
        if cfg.monitor.logz:
            extras["logz"] = r.model.logz_mean.float()
        if z_loss_on:
            z_mean = z_sum / accum
            if ddp.enabled:
                dist.all_reduce(z_mean, op=dist.ReduceOp.SUM)
                z_mean /= ddp.world_size
            extras["z_loss"] = z_mean
        if r.sharpness is not None:  # after the update, with the preconditioner it used
            if r.sharpness.due(step):  # a measurement waits for the GPU anyway (docs/performance.md)
                extras["sharpness"] = torch.tensor(r.sharpness.measure(r.model, r.optimizer), device=device)
            else:
                extras["sharpness"] = self.no_sharpness

        values = [loss_mean, loss_max, grad_norm] + [extras[f] for f in r.records.fields[3:]]
        values = torch.stack([v.reshape(()) for v in values])
        if events is not None:
            events[1].record()
        seconds = None if events is not None else time.perf_counter() - start
        batch = accum * r.plan.batches.quantum
        progress.tokens += batch * cfg.model.block_size
        r.records.add(PendingStep(step, lr, beta1, progress.tokens, batch, skipped, seconds, events), values)
        progress.step += 1
