"""The run plan: every fact of a run that follows from its config before any compute.

    global batch and accumulation, with an optional batch ramp (BatchPlan)
    run length in optimizer updates, from trainer.max_steps, max_tokens or epochs
    the schedule's unit and length (updates, or full-batch steps when counted in tokens)
    the peak LR after the batch-size scaling rule, and the built schedule

It is derived here once and read everywhere else: the command-line check, the trainer, the
stacked runs, the figures and the sweep report. `lr_at(step, tokens_seen)` is the LR and beta1
of the update after `step` updates; `describe()` is what goes into summary.json, so a report
reads the plan the trainer used instead of guessing it from the config. `apply(optimizer, step,
tokens_seen)` writes lr_at's values into the optimizer before each update: the LR of step t is
config.py (the values) -> here (the plan) -> schedules.py (the multiplier), nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from minigpt import schedules
from minigpt.config import MAX_STEPS, Config, OptimConfig, TrainerConfig, parse_count
from minigpt.errors import UserError


# --- the global batch of each update, with an optional batch-size ramp ----------------------
#
# GPT-3 (Brown et al. 2020, section 2.3) grows the batch linearly from a small value to its
# full size over the first tokens of training. Here the batch grows from
# `trainer.batch_ramp_start` sequences to the configured global batch over
# `trainer.batch_ramp_tokens` tokens, by raising the accumulation count: the micro-batch (and so
# the memory) never changes, and the batch moves in steps of micro_batch_size x ranks.
#
# The batch is a pure function of the tokens seen before the update, so a resumed run needs
# nothing but its token count to continue the ramp exactly. Without a ramp every update has the
# full batch and all of this reduces to `ceil(tokens / tokens_per_step)` updates.


@dataclass(frozen=True)
class BatchPlan:
    final: int  # global sequences per update once the ramp is over (the configured batch)
    start: int  # ... at token 0 (== final without a ramp)
    ramp_tokens: int  # tokens over which the batch grows linearly from start to final (0: no ramp)
    quantum: int  # micro_batch_size x ranks: the batch grows one micro-batch per rank at a time
    block_size: int

    @classmethod
    def from_config(cls, tc: TrainerConfig, world_size: int, block_size: int) -> "BatchPlan":
        quantum = tc.micro_batch_size * world_size
        final = quantum * tc.grad_accum  # trainer.batch_size, when given, sets the accumulation
        if tc.batch_size is not None:
            if tc.batch_size % quantum:
                raise UserError(f"trainer.batch_size ({tc.batch_size}) is not divisible by micro_batch_size x ranks "
                                f"({tc.micro_batch_size} x {world_size} = {quantum}); pick a multiple of {quantum}")
            final = tc.batch_size
        if tc.batch_ramp_start is None:
            return cls(final, final, 0, quantum, block_size)
        if tc.batch_ramp_start > final:
            raise UserError(f"trainer.batch_ramp_start ({tc.batch_ramp_start} sequences) is larger than the global batch "
                            f"it ramps up to ({final} = micro_batch_size x grad_accum x ranks); give a smaller start, "
                            "e.g. trainer.batch_ramp_start=" + str(max(quantum, final // 4 // quantum * quantum)))
        start = max(quantum, tc.batch_ramp_start // quantum * quantum)
        return cls(final, start, parse_count(tc.batch_ramp_tokens, "trainer.batch_ramp_tokens"), quantum, block_size)

    @property
    def final_tokens(self) -> int:
        """Tokens per update at the full batch."""
        return self.final * self.block_size

    def batch_at(self, tokens_seen: int) -> int:
        """Global sequences of the update that starts after `tokens_seen` training tokens."""
        if tokens_seen >= self.ramp_tokens:
            return self.final
        size = self.start + (self.final - self.start) * tokens_seen / self.ramp_tokens
        return min(self.final, max(self.start, int(size) // self.quantum * self.quantum))

    def accum_at(self, tokens_seen: int) -> int:
        """Micro-batches per rank of that update."""
        return self.batch_at(tokens_seen) // self.quantum

    def updates_for(self, tokens: int) -> int:
        """How many updates it takes to see at least `tokens` tokens (at least one)."""
        seen, updates = 0, 0
        while seen < min(tokens, self.ramp_tokens):
            size = self.batch_at(seen) * self.block_size
            n = -(-(min(self._level_end(seen), tokens) - seen) // size)  # updates at this batch
            seen, updates = seen + n * size, updates + n
        return max(1, updates + max(0, math.ceil((tokens - seen) / self.final_tokens)))

    def tokens_after(self, updates: int) -> int:
        """Tokens seen after `updates` updates."""
        seen, done = 0, 0
        while done < updates and seen < self.ramp_tokens:
            size = self.batch_at(seen) * self.block_size
            n = min(updates - done, -(-(self._level_end(seen) - seen) // size))
            seen, done = seen + n * size, done + n
        return seen + (updates - done) * self.final_tokens

    def _level_end(self, seen: int) -> int:
        """The first token count after `seen` at which the ramp's batch grows (or the ramp ends).

        The ramp walks batch levels, not updates, so its cost is O(levels) however long the ramp
        (a ramp of 10^15 tokens in updates of 16 tokens was 6 x 10^13 turns of a loop): the
        boundary comes from the linear formula in exact integers, then is moved onto the first
        token count that batch_at (floats) puts on the next level."""
        batch = self.batch_at(seen)
        if batch >= self.final:
            return max(seen, self.ramp_tokens)
        target = batch + self.quantum  # the next level
        end = max(seen + 1, -(-(target - self.start) * self.ramp_tokens // (self.final - self.start)))
        end = min(end, self.ramp_tokens)
        while end < self.ramp_tokens and self.batch_at(end) <= batch:
            end += 1
        while end - 1 > seen and self.batch_at(end - 1) > batch:
            end -= 1
        return end

    def schedule_steps(self, updates: int, unit: str) -> int:
        """The length the schedule is built for: the updates, or (unit "tokens") the run's tokens
        in full-batch steps, so the LR at every token is the planned one whatever the batch."""
        if unit == "steps":
            return updates
        return max(1, round(self.tokens_after(updates) / self.final_tokens))

    def schedule_position(self, step: int, tokens_seen: int, unit: str) -> float:
        """Where the schedule is read for the update after `step` updates and `tokens_seen` tokens."""
        return step if unit == "steps" else tokens_seen / self.final_tokens


# --- the LR ------------------------------------------------------------------------------------


def scaled_peak_lr(cfg: OptimConfig, batch_tokens: int) -> float:
    """The peak LR after the batch-size scaling rule: lr * (B / B_ref) or lr * sqrt(B / B_ref).

    B is the global batch in tokens (micro-batch x accumulation x ranks x context), so changing
    the number of ranks or the accumulation at a fixed global batch leaves the LR unchanged.
    """
    if cfg.lr_scaling == "none":
        return cfg.lr
    ratio = batch_tokens / cfg.reference_batch_tokens
    return cfg.lr * (ratio if cfg.lr_scaling == "linear" else math.sqrt(ratio))


def scaled_adam(cfg: OptimConfig, batch_tokens: int) -> tuple[float, float, float]:
    """(beta1, beta2, eps) after the batch-size scaling rule. Only sqrt_adam changes them:
    Malladi et al. 2022 (On the SDEs and Scaling Rules for Adaptive Gradient Algorithms), for a
    batch k = B / B_ref times the reference: beta_i -> 1 - k (1 - beta_i), eps -> eps / sqrt(k)."""
    if cfg.lr_scaling != "sqrt_adam":
        return cfg.beta1, cfg.beta2, cfg.eps
    k = batch_tokens / cfg.reference_batch_tokens
    betas = []
    for name in ("beta1", "beta2"):
        beta = 1.0 - k * (1.0 - getattr(cfg, name))
        if not 0.0 <= beta < 1.0:
            raise UserError(f"optim.lr_scaling=sqrt_adam: the batch is {k:.4g} x optim.reference_batch_tokens, so "
                            f"{name} = 1 - {k:.4g} x (1 - {getattr(cfg, name)}) = {beta:.4g}, outside [0, 1); the rule "
                            f"needs k (1 - {name}) <= 1: raise optim.{name}, use a reference batch closer to this one, "
                            "or optim.lr_scaling=sqrt_lr (the LR only)")
        betas.append(beta)
    return betas[0], betas[1], cfg.eps / math.sqrt(k)


@dataclass(frozen=True)
class RunPlan:
    batches: BatchPlan
    total_steps: int  # optimizer updates of the whole run
    schedule_unit: str  # "steps" (updates) or "tokens" (tokens seen / tokens of a full batch)
    configured_lr: float  # optim.lr as given
    peak_lr: float  # after the batch-size scaling rule
    lr_scaling: str
    schedule: schedules.Schedule  # built for schedule_steps, checked
    beta1: float = 0.9  # Adam's, after the batch-size scaling rule (sqrt_adam changes them)
    beta2: float = 0.95
    eps: float = 1e-8
    lr_multipliers: dict | None = None  # per parameter group, on top of the schedule (optim.lr_multipliers)
    optimizer: str = "adamw"  # optim.name
    # Muon's momentum: (start, end, warmup steps), linear from start to end over the warmup
    muon_momentum: tuple[float, float, int] | None = None
    ema_half_life: int | None = None  # optim.ema in steps; None: no weight average

    @classmethod
    def build(cls, cfg: Config, world_size: int = 1, train_tokens: int | None = None) -> "RunPlan":
        """The plan of `cfg` on `world_size` ranks. `train_tokens` (the size of the training
        split) is needed only for a length in trainer.epochs; raises UserError on a bad schedule."""
        tc = cfg.trainer
        batches = BatchPlan.from_config(tc, world_size, cfg.model.block_size)
        if tc.max_steps is not None:
            total = tc.max_steps
        elif tc.max_tokens is not None:
            total = batches.updates_for(parse_count(tc.max_tokens, "trainer.max_tokens"))
        elif train_tokens is not None:
            total = batches.updates_for(int(tc.epochs * train_tokens))
        else:
            raise UserError("trainer.epochs: the run length is known only once the data is prepared")
        if total > MAX_STEPS:
            raise UserError(f"the run would take {total:,} updates, more than the {MAX_STEPS:.0e} a run may have "
                            "(minigpt/config.py MAX_STEPS); give a shorter trainer.max_tokens / trainer.epochs")
        schedule_steps = batches.schedule_steps(total, tc.schedule_unit)
        schedule = schedules.schedule_from_config(dict(cfg.scheduler), schedule_steps, batches.final_tokens)
        schedules.check_curve(schedule)
        peak = scaled_peak_lr(cfg.optim, batches.final_tokens)
        beta1, beta2, eps = scaled_adam(cfg.optim, batches.final_tokens)
        if cfg.optim.lr_scaling == "sqrt_adam" and schedule.beta1(0) is not None:
            raise UserError(f"optim.lr_scaling=sqrt_adam sets beta1 from the batch, and scheduler={schedule.name} cycles "
                            "it: use optim.lr_scaling=sqrt_lr, or scheduler.cycle_momentum=false")
        if cfg.optim.lr_scaling == "sqrt_adam" and batches.ramp_tokens:
            raise UserError("optim.lr_scaling=sqrt_adam scales Adam's betas to the full batch; with a batch-size ramp "
                            "the batch changes during the run: use optim.lr_scaling=sqrt_lr or no ramp")
        m = cfg.optim.lr_multipliers
        if m.head != m.embedding:
            raise UserError(f"optim.lr_multipliers.head ({m.head}) differs from optim.lr_multipliers.embedding "
                            f"({m.embedding}), but the output layer is the token embedding (tied weights, one tensor): "
                            "give both the same value")
        multipliers = {"embedding": m.embedding, "head": m.head, "matrices": m.matrices, "norms_biases": m.norms_biases}
        mu = cfg.optim.muon
        momentum = (mu.momentum_start if mu.momentum_warmup else mu.momentum, mu.momentum, mu.momentum_warmup)
        if cfg.optim.name == "muon" and schedule.beta1(0) is not None:
            raise UserError(f"scheduler={schedule.name} cycles Adam's beta1, which Muon's groups do not have: use "
                            "scheduler.cycle_momentum=false with optim=muon")
        return cls(batches, total, tc.schedule_unit, cfg.optim.lr, peak, cfg.optim.lr_scaling, schedule,
                   beta1, beta2, eps, multipliers, cfg.optim.name, momentum if cfg.optim.name == "muon" else None,
                   ema_half_life_steps(cfg.optim.ema, total, batches.final_tokens))

    # --- what the trainer reads ---

    @property
    def global_batch(self) -> int:
        """Sequences per update at the full batch."""
        return self.batches.final

    @property
    def grad_accum(self) -> int:
        """Micro-batches per rank of an update at the full batch."""
        return self.batches.final // self.batches.quantum

    @property
    def tokens_per_step(self) -> int:
        return self.batches.final_tokens

    @property
    def total_tokens(self) -> int:
        return self.batches.tokens_after(self.total_steps)

    @property
    def schedule_steps(self) -> int:
        return self.schedule.total_steps

    def position(self, step: int, tokens_seen: int) -> float:
        """Where the schedule is read for the update after `step` updates and `tokens_seen` tokens."""
        return self.batches.schedule_position(step, tokens_seen, self.schedule_unit)

    def lr_at(self, step: int, tokens_seen: int = 0) -> tuple[float, float | None]:
        """(LR, beta1 or None) of the update after `step` updates and `tokens_seen` tokens. The LR is
        the schedule's, before any per-group multiplier; beta1 is None unless the schedule cycles it
        or sqrt_adam scaled it (then it is the optimizer's beta1 at every step)."""
        position = self.position(step, tokens_seen)
        beta1 = self.schedule.beta1(position)
        if beta1 is None and self.lr_scaling == "sqrt_adam":
            beta1 = self.beta1
        return self.peak_lr * self.schedule(position), beta1

    def apply(self, optimizer, step: int, tokens_seen: int = 0) -> tuple[float, float | None]:
        """Write the LR (and beta1, where lr_at gives one) of the update after `step` updates and
        `tokens_seen` tokens into every parameter group of `optimizer`: the group's LR is lr_at's
        times the group's optim.lr_multipliers factor ("lr_mult", minigpt/optim.py). The one place
        that sets an optimizer's LR during a run (the trainer's stepper and the stacked runs call
        it); returns lr_at's (LR, beta1), which the step's record carries."""
        lr, beta1 = self.lr_at(step, tokens_seen)
        momentum = self.muon_momentum_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
            if beta1 is not None and "betas" in group:
                group["betas"] = (beta1, group["betas"][1])
            if momentum is not None and "momentum" in group:  # Muon's groups
                group["momentum"] = momentum
        return lr, beta1

    def muon_momentum_at(self, step: int) -> float | None:
        """Muon's momentum for the update after `step` updates (None without Muon): linear from the
        start value to the final one over the warmup, as modded-nanogpt's train_gpt.py does it."""
        if self.muon_momentum is None:
            return None
        start, end, warmup = self.muon_momentum
        frac = min(step / warmup, 1.0) if warmup else 1.0
        return (1 - frac) * start + frac * end

    @property
    def ema_decay(self) -> float | None:
        """The weight average's factor per update, 0.5 ** (1 / half-life): after `half-life` updates a
        weight's share in the average has halved."""
        return None if self.ema_half_life is None else 0.5 ** (1.0 / self.ema_half_life)

    @property
    def warmup_steps(self) -> int:
        """The warmup as the schedule converted it, in schedule steps (0 for schedules without one)."""
        return int(getattr(self.schedule.params, "warmup", 0) or 0)

    # --- what people read ---

    def describe(self) -> dict:
        """The plan as plain values (summary.json's "plan")."""
        b = self.batches
        return {
            "total_steps": self.total_steps,
            "total_tokens": self.total_tokens,
            "global_batch": self.global_batch,
            "grad_accum": self.grad_accum,
            "tokens_per_step": self.tokens_per_step,
            "batch_ramp": {"start": b.start, "tokens": b.ramp_tokens} if b.ramp_tokens else None,
            "schedule": self.schedule.name,
            "schedule_unit": self.schedule_unit,
            "schedule_steps": self.schedule_steps,
            "warmup_steps": self.warmup_steps,
            "phases": self.schedule.phases(),
            "configured_lr": self.configured_lr,
            "peak_lr": self.peak_lr,
            "lr_scaling": self.lr_scaling,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "lr_multipliers": self.lr_multipliers,
            "optimizer": self.optimizer,
            "muon_momentum": list(self.muon_momentum) if self.muon_momentum else None,
            "ema_half_life_steps": self.ema_half_life,
        }

    def lines(self, micro_batch_size: int, world_size: int, train_tokens: int) -> list[str]:
        """The plan in words, as the trainer announces it."""
        b, unit = self.batches, self.schedule_unit
        epochs = self.total_tokens / max(1, train_tokens)
        out = [f"run: {self.total_steps} steps x {'up to ' if b.ramp_tokens else ''}{self.tokens_per_step:,} tokens "
               f"({micro_batch_size} x {self.grad_accum} accumulation x {world_size} ranks x {b.block_size}) = "
               f"{self.total_tokens:,} tokens, {epochs:.2f} epochs" + (" (with the batch ramp)" if b.ramp_tokens else "")]
        if b.ramp_tokens:
            out.append(f"batch ramp: {b.start} -> {b.final} sequences over the first {b.ramp_tokens:,} tokens, then "
                       f"{b.final} per update; schedule counted in tokens ({self.schedule_steps} full-batch steps)"
                       if unit == "tokens" else
                       f"batch ramp: {b.start} -> {b.final} sequences over the first {b.ramp_tokens:,} tokens; "
                       "schedule counted in updates")
        if self.lr_scaling != "none":
            out.append(f"lr: configured {self.configured_lr:g}, effective peak {self.peak_lr:g} "
                       f"({self.lr_scaling} scaling to {self.tokens_per_step:,} tokens per batch)"
                       + (f"; Adam beta1 {self.beta1:.6g}, beta2 {self.beta2:.6g}, eps {self.eps:.4g}"
                          if self.lr_scaling == "sqrt_adam" else ""))
        if self.lr_multipliers and any(v != 1.0 for v in self.lr_multipliers.values()):
            out.append("lr multipliers per group: " + ", ".join(f"{k} x{v:g}" for k, v in self.lr_multipliers.items()))
        out.append("schedule: " + self.schedule.summary_line(self.peak_lr))
        if self.optimizer != "adamw":
            out.append(f"optimizer: {self.optimizer}" + (
                f" (Muon momentum {self.muon_momentum[0]:g} -> {self.muon_momentum[1]:g} over "
                f"{self.muon_momentum[2]} steps)" if self.muon_momentum and self.muon_momentum[2] else ""))
        if self.ema_half_life is not None:
            out.append(f"weight average (EMA): half-life {self.ema_half_life} steps (decay {self.ema_decay:.6g} per "
                       "update), evaluated as val/loss_ema")
        return out


def ema_half_life_steps(value, total_steps: int, tokens_per_step: int) -> int | None:
    """optim.ema as whole steps (None: off), converted like a schedule's lengths (schedules.to_steps);
    refused when it is 0 or longer than the run."""
    if value is None:
        return None
    steps = schedules.to_steps(value, total_steps, tokens_per_step, "optim.ema")
    if steps < 1:
        raise UserError(f"optim.ema={value!r} is a half-life of {steps} steps; give at least 1 step, or "
                        "optim.ema=null to turn the weight average off")
    if steps > total_steps:
        raise UserError(f"optim.ema={value!r} is a half-life of {steps} steps, longer than the run ({total_steps} "
                        "steps): the average would still be mostly the initial weights; give a shorter half-life, "
                        "e.g. optim.ema=10%")
    return steps
