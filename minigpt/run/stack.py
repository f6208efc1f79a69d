"""Several runs of one model shape, trained together in one process as one batched model.

Why: a tiny model leaves a GPU mostly idle. Each step is a few hundred small kernels and the
time goes into launching them; processes that share the GPU take turns on it rather than
overlap, so eight of them at once barely beat eight in a row. Here the weights of M runs are
stacked along a new leading dimension and the model is called through
`torch.func.vmap(functional_call(...))`: every layer becomes one batched kernel for all runs,
so the same number of launches does M times the work.

How: each run is an ordinary `Trainer` (its config, run directory, plan, monitor, records,
checkpoints and summary) and `trainer.fit` runs the loop; this module is only the stepper that
replaces their step and their evaluation.
Per run: its initialisation (seed), LR and beta1 from its own schedule, AdamW hyperparameters
and state, gradient clipping and divergence verdict. Shared: model shape, data, batch, run
length, precision and intervals (`check_stackable` says which key differs when they do not).

All runs' weights live in one flat tensor of shape (M, P), and each parameter is a view into
it, as are the gradients: AdamW and clipping are then a handful of kernels over (M, P) with
per-run (M, 1) hyperparameters, with the arithmetic of torch.optim.AdamW. Before a checkpoint
a run's slice is copied back into its Trainer's model and optimizer, so its checkpoint is an
ordinary one (`trainer.resume`, `minigpt sample`). A run that diverges is finished (records,
summary) and dropped from the stack; the others carry on.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from pathlib import Path

import torch
from torch.func import functional_call, vmap

from minigpt.config import Config
from minigpt.errors import UserError
from minigpt.run.checkpoint import flatten
from minigpt.model import GPT
from minigpt.optim import decay_coefficient
from minigpt.run.records import Evaluation, PendingStep
from minigpt.run.metrics import RunResult
from minigpt.run.trainer import Trainer, batch_stderr, fit

log = logging.getLogger("minigpt")

# Config keys in which stacked runs may differ; all others must be equal.
MAY_DIFFER = ("seed", "run_name", "optim.", "scheduler.", "monitor.", "logger.")


def stack_groups(configs: list[Config]) -> list[list[int]]:
    """Indices of the runs that can share a stack (equal in every key but MAY_DIFFER), in order."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        shape = tuple(sorted((k, repr(v)) for k, v in flatten(c.to_dict()).items() if not k.startswith(MAY_DIFFER)))
        groups.setdefault(shape, []).append(i)
    return list(groups.values())


def check_stackable(configs: list[Config]) -> None:
    """Raise UserError unless the runs can be trained as one stack (one line, naming the key)."""
    if not configs:
        raise UserError("no runs to stack")
    flat = [flatten(c.to_dict()) for c in configs]
    for key in sorted(set().union(*flat)):
        if key.startswith(MAY_DIFFER):
            continue
        values = sorted({repr(f.get(key)) for f in flat})
        if len(values) > 1:
            raise UserError(f"stacked runs share everything but their seed, optim.*, scheduler.*, monitor.* and "
                            f"logger.*; {key} differs ({', '.join(values)})")
    cfg = configs[0]
    unsupported = [("trainer.compile", cfg.trainer.compile), ("trainer.precision=fp16", cfg.trainer.precision == "fp16"),
                   ("a batch-size ramp (trainer.batch_ramp_start)", cfg.trainer.batch_ramp_start is not None),
                   ("trainer.schedule_unit=tokens", cfg.trainer.schedule_unit == "tokens"),
                   ("task=lr_range_test", cfg.task != "train"),
                   ("trainer.eval_only", cfg.trainer.eval_only),
                   # the stacked loss is one number per run: the z term would stay inside val/loss
                   ("model.z_loss", cfg.model.z_loss > 0)]
    for c in configs:
        # Only AdamW (GI-Adam included) is written out over the flat (M, P) tensors here; the weight
        # average would need a stacked evaluation of its own.
        unsupported += [(f"optim={c.optim.name}", c.optim.name != "adamw"), ("optim.ema", c.optim.ema is not None)]
        # The stack's AdamW has one LR per run: per-group multipliers would need one per tensor.
        unsupported += [("optim.lr_multipliers", c.optim.lr_multipliers.non_default())]
        unsupported += [(f"monitor.{k}", getattr(c.monitor, k)) for k in ("skip_spikes", "update_ratio",
                                                                          "max_attn_logit", "logz", "sharpness_every")]
    for name, on in unsupported:
        if on:
            raise UserError(f"{name} is not supported for stacked runs; turn it off or use the default launcher")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("stacked runs train in one process: launch them without torchrun")


class StackedStepper:
    """Steps the runs of one stack together; `runs` are the Trainers still in the stack, in
    stack order (a run that ends is dropped from every stacked tensor), and `parts` their
    StepParts (state.py): what the stepper reads and advances of each."""

    def __init__(self, configs: list[Config], run_dirs: list[Path], quiet: bool = False):
        check_stackable(configs)
        self.all = []
        try:
            for cfg, d in zip(configs, run_dirs):
                self.all.append(Trainer(cfg, Path(d), quiet=quiet, label=Path(d).name))  # stacked.log names the job
            self._setup(quiet)
        except BaseException:
            for r in self.all:  # release the run folders already taken
                r.close()
            raise

    def _setup(self, quiet: bool) -> None:
        self.runs = list(self.all)
        self.all_parts = [r.step_parts() for r in self.all]
        self.parts = list(self.all_parts)
        first = self.parts[0]
        if first.runtime.precision == "fp16":
            raise UserError("trainer.precision: fp16 (this GPU has no bf16) is not supported for stacked runs; "
                            "use trainer.precision=fp32 or the default launcher")
        steps = sorted({p.progress.step for p in self.parts})
        if len(steps) > 1:
            raise UserError(f"trainer.resume: the stacked runs resume from different steps ({steps}); "
                            "resume them one by one with the default launcher")
        self.say = (lambda msg: None) if quiet else log.info
        self.device, self.step, self.total_steps = first.runtime.device, first.progress.step, first.plan.total_steps
        self.grad_accum, self.tc = first.plan.grad_accum, first.cfg.trainer

        # The parameters in a fixed order, decayed ones first (AdamW decays the leading columns).
        named = list(first.model.named_parameters())  # tied weights appear once
        named.sort(key=lambda item: item[1].dim() < 2)
        self.names = [n for n, _ in named]
        self.shapes = {n: p.shape for n, p in named}
        self.n_decay = sum(p.numel() for _, p in named if p.dim() >= 2)
        width = sum(p.numel() for _, p in named)
        own = [dict(p.model.named_parameters()) for p in self.parts]
        with torch.no_grad():
            self.flat = torch.cat([torch.stack([o[n].detach().reshape(-1) for o in own]) for n in self.names], dim=1)
        self.flat_grad = torch.zeros_like(self.flat)
        # AdamW state; a resumed run brings its own.
        states = [[p.optimizer.state.get(o[n]) for n in self.names] for p, o in zip(self.parts, own)]
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.adam_step = torch.zeros(len(self.parts), dtype=torch.float64, device=self.device)
        self.fresh = not all(s is not None for run in states for s in run)
        if not self.fresh:
            with torch.no_grad():
                self.exp_avg.copy_(torch.stack([torch.cat([s["exp_avg"].reshape(-1) for s in run]) for run in states]))
                self.exp_avg_sq.copy_(torch.stack([torch.cat([s["exp_avg_sq"].reshape(-1) for s in run])
                                                   for run in states]))
            self.adam_step.copy_(torch.tensor([float(run[0]["step"]) for run in states]))
        assert self.flat.shape[1] == width

        # Per-run hyperparameters: constants, and the LR and beta1 of every step (schedules are
        # pure functions of the step), computed once so that no step waits on a host->device copy.
        def column(values):
            return torch.tensor(values, dtype=torch.float64, device=self.device)

        optims = [p.cfg.optim for p in self.parts]
        # Adam's betas and eps after the batch-size rule (sqrt_adam scales them): the run plan's.
        self.beta2, self.eps = column([p.plan.beta2 for p in self.parts]), column([p.plan.eps for p in self.parts])
        self.weight_decay = column([decay_coefficient(p.cfg.optim, p.plan.peak_lr) for p in self.parts])
        self.max_norm = column([o.grad_clip if o.grad_clip > 0 else math.inf for o in optims])
        # optim.adam_init=grad (GI-Adam): those runs' second moment starts at the first gradient's square
        self.grad_init = torch.tensor([[o.adam_init == "grad"] for o in optims], device=self.device)
        plans = [[p.plan.lr_at(t) for t in range(self.total_steps)] for p in self.parts]  # stacks count in steps
        self.lrs = [[lr for lr, _ in plan] for plan in plans]
        self.beta1s = [[b if b is not None else p.plan.beta1 for _, b in plan] for p, plan in zip(self.parts, plans)]
        self.lr_table, self.beta1_table = column(self.lrs).T.contiguous(), column(self.beta1s).T.contiguous()

        with torch.device("meta"):  # the model's code, without weights: functional_call supplies them
            self.template = GPT(first.model_config)
        if self.device.type == "cpu":
            # torch has no vmap rule for the CPU attention kernel and loops over the runs there;
            # CUDA's flash / memory-efficient / cuDNN attention kernels have one.
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented "
                                    "the batching rule for aten::_scaled_dot_product_flash_attention_for_cpu")
        self.shared_data = len({p.cfg.seed for p in self.parts}) == 1
        self._build_views()

    # --- the stacked model ---

    def _build_views(self) -> None:
        """Parameters (leaves) and their gradients as views of the flat tensors."""
        m = len(self.runs)
        self.params, offset = {}, 0
        for name in self.names:
            n = math.prod(self.shapes[name])
            p = torch.nn.Parameter(torch.empty(0, device=self.device))
            p.data = self.flat[:, offset:offset + n].view(m, *self.shapes[name])
            p.grad = self.flat_grad[:, offset:offset + n].view(m, *self.shapes[name])
            self.params[name] = p
            offset += n

        def loss_of(params, x, y):
            return functional_call(self.template, params, (x, y), tie_weights=True)[1]

        data_dim = None if self.shared_data else 0
        self.batched_loss = vmap(loss_of, in_dims=(0, data_dim, data_dim), randomness="different")

    def _batches(self, get):
        """(x, y) for every run in the stack: one batch when all runs share a seed, else stacked."""
        if self.shared_data:
            return get(self.parts[0])
        pairs = [get(p) for p in self.parts]
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])

    def drop(self, run: Trainer) -> None:
        """Take a run that ended out of every stacked tensor."""
        keep = [k for k, r in enumerate(self.runs) if r is not run]
        self.runs = [self.runs[k] for k in keep]
        self.parts = [self.parts[k] for k in keep]
        if not keep:
            return
        if run.ended() is not None:
            self.say(f"stack: {run.run_dir.name} {run.ended()}; {len(keep)} carry on")
        index = torch.tensor(keep, device=self.device)
        with torch.no_grad():
            for name in ("flat", "flat_grad", "exp_avg", "exp_avg_sq", "adam_step", "beta2", "eps", "weight_decay",
                         "max_norm", "grad_init"):
                setattr(self, name, getattr(self, name).index_select(0, index).contiguous())
            self.lr_table = self.lr_table.index_select(1, index).contiguous()
            self.beta1_table = self.beta1_table.index_select(1, index).contiguous()
        self._build_views()

    # --- one optimizer step for every run ---

    def train_step(self) -> None:
        step, first, m = self.step, self.parts[0], len(self.parts)
        start = time.perf_counter()
        events = first.records.timing()  # CUDA events around the step's work; None on the CPU
        loss_sum = torch.zeros(m, device=self.device)
        loss_max = torch.full((m,), -math.inf, device=self.device)
        for micro in range(self.grad_accum):
            x, y = self._batches(lambda r: r.train_batches.train_batch(step, micro))
            with first.runtime.autocast():
                losses = self.batched_loss(self.params, x, y)  # (M,): each run's mean loss
            # Runs are independent, so the gradient of the sum is each run's own gradient.
            with warnings.catch_warnings():
                # The gradients are strided views into flat_grad on purpose (see the module docstring).
                warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
                (losses.sum() / self.grad_accum).backward()
            losses = losses.detach().float()
            loss_sum += losses
            loss_max = torch.maximum(loss_max, losses)
        grad_norm = self._clip_and_update(step)
        values = torch.stack([loss_sum / self.grad_accum, loss_max, grad_norm], dim=1)  # (M, 3)
        if events is not None:
            events[1].record()
        seconds = None if events is not None else time.perf_counter() - start
        for k, r in enumerate(self.parts):
            i = self.all_parts.index(r)
            r.progress.tokens += r.plan.tokens_per_step
            r.records.add(PendingStep(step, self.lrs[i][step], r.plan.lr_at(step)[1], r.progress.tokens,
                                      r.plan.global_batch, False, seconds, events), values[k])
            r.progress.step += 1
        self.step += 1

    @torch.no_grad()
    def _clip_and_update(self, step: int) -> torch.Tensor:
        """Per-run gradient clipping, then AdamW on the flat (M, P) tensors; returns the norms."""
        g = self.flat_grad
        norm = g.float().pow(2).sum(dim=1).sqrt()  # (M,): each run's global grad norm, before clipping
        coef = (self.max_norm / (norm.double() + 1e-6)).clamp(max=1.0)  # as clip_grad_norm_
        g.mul_(coef.float()[:, None])

        lr, beta1 = self.lr_table[step], self.beta1_table[step]
        if self.fresh:  # the first update of runs without an AdamW state: GI-Adam's v_0 = g^2 (minigpt/optim.py)
            self.exp_avg_sq.copy_(torch.where(self.grad_init, g * g, self.exp_avg_sq))
            self.fresh = False
        self.adam_step += 1
        col = lambda v: v.float()[:, None]  # noqa: E731 - (M,) float64 -> (M, 1) float32
        self.flat[:, :self.n_decay].mul_(col(1 - lr * self.weight_decay))  # decoupled weight decay
        self.exp_avg.lerp_(g, col(1 - beta1))
        self.exp_avg_sq.mul_(col(self.beta2)).addcmul_(g, g * col(1 - self.beta2))
        bias1 = 1 - beta1 ** self.adam_step
        bias2_sqrt = (1 - self.beta2 ** self.adam_step).sqrt()
        denom = (self.exp_avg_sq.sqrt() / col(bias2_sqrt)).add_(col(self.eps))
        self.flat.sub_(col(lr / bias1) * self.exp_avg / denom)
        g.zero_()
        return norm

    @torch.no_grad()
    def evaluate(self) -> list[Evaluation]:
        """Each run's mean loss over the fixed validation windows, with its standard error."""
        first = self.parts[0]
        self.template.eval()
        total = torch.zeros(len(self.parts), device=self.device, dtype=torch.float64)
        total_sq = torch.zeros_like(total)  # for each run's standard error over the batches (val/loss_stderr)
        for i in range(self.tc.eval_iters):
            x, y = self._batches(lambda r: r.val_batches.eval_batch(i))
            with first.runtime.autocast():
                loss = self.batched_loss(self.params, x, y).double()
            total += loss
            total_sq += loss**2
        self.template.train()
        n = self.tc.eval_iters
        return [Evaluation(s / n, batch_stderr(s, sq, n)) for s, sq in zip(total.tolist(), total_sq.tolist())]

    def save(self, run: Trainer) -> Path | None:
        """Copy the run's slice into its Trainer's model and optimizer; save an ordinary checkpoint."""
        k = self.runs.index(run)
        parts = self.parts[k]
        own = dict(parts.model.named_parameters())
        with torch.no_grad():
            offset = 0
            for name in self.names:
                n = math.prod(self.shapes[name])
                p = own[name]
                p.copy_(self.flat[k, offset:offset + n].view(self.shapes[name]))
                parts.optimizer.state[p] = {
                    "step": torch.tensor(float(self.adam_step[k])),
                    "exp_avg": self.exp_avg[k, offset:offset + n].view(self.shapes[name]).clone(),
                    "exp_avg_sq": self.exp_avg_sq[k, offset:offset + n].view(self.shapes[name]).clone(),
                }
                offset += n
        # the LR and beta1 of the last update, as the trainer leaves them
        parts.plan.apply(parts.optimizer, max(self.step - 1, 0))
        return run.save()

    def run(self) -> list[RunResult]:
        self.say(f"stack: {len(self.all)} runs trained together as one batched model "
                 f"({'one batch for all' if self.shared_data else 'a batch per seed'})")
        return fit(self.all, self, shared_process=True, stacked_runs=len(self.all))


def train_stacked(configs: list[Config], run_dirs: list[Path], quiet: bool = False,
                  max_stack: int | None = None) -> list[RunResult]:
    """Train the runs, as few stacks as their configs allow (at most max_stack runs each), one
    stack after another; results in the order of the configs."""
    for cfg in configs:
        check_stackable([cfg])  # unsupported options: refused before anything runs
    results: list[RunResult | None] = [None] * len(configs)
    for group in stack_groups(configs):
        size = max_stack or len(group)
        for start in range(0, len(group), size):
            part = group[start:start + size]
            done = StackedStepper([configs[i] for i in part], [run_dirs[i] for i in part], quiet=quiet).run()
            for i, result in zip(part, done):
                results[i] = result
    return results
