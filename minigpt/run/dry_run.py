"""The dry run (`trainer.dry_run=true`): the run's plan without the run.

It answers "which floor, how many tokens, how many epochs, how big, how much memory?" from the
config alone: the plan (minigpt/plan.py: batch, length, schedule, peak LR), the parameter count
(model.GPTConfig.num_params: a formula, no model is built) and a memory estimate; it draws the
planned LR into schedule.png. No data is prepared: the training split's size (for the epochs,
and the length of a run given in trainer.epochs) comes from the token cache's meta.json when
a cache is already built, and is said to be unknown otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from minigpt.config import Config
from minigpt.errors import UserError
from minigpt.model import GPTConfig
from minigpt.plan import RunPlan

ADAMW_STATE_BYTES = 16  # per parameter: fp32 weight, gradient, and AdamW's two moments


@dataclass
class DryRun:
    plan: RunPlan | None  # None when the length (trainer.epochs) needs the data
    n_params: int  # without position embeddings, as the trainer counts them
    train_tokens: int | None  # the training split's tokens, from a built token cache
    vocab_size: int
    memory: dict  # memory_estimate()'s
    lines: list[str]  # the plan in words
    line: str  # the plan in one line (a sweep prints one per job)


def built_cache_meta(cfg: Config) -> dict | None:
    """meta.json of this data config's token cache when it is built (read, never built here)."""
    from minigpt.data.cache import cache_key, check_cache

    try:
        return check_cache(Path(cfg.data.cache_dir) / f"{cfg.data.name}-{cache_key(cfg.data)}")[0]
    except UserError:  # a corpus that is not there yet: the run will say so
        return None


def memory_estimate(model: GPTConfig, micro_batch_size: int, precision: str) -> dict:
    """Bytes of training memory on one device, an estimate: the weights, gradients and AdamW
    state (ADAMW_STATE_BYTES per parameter, position embeddings included) and the activations
    one micro-batch keeps for the backward pass, after Korthikanti et al. 2022 ("Reducing
    activation recomputation in large transformer models", eq. 2: s b h (34 + 5 a s / h) bytes
    a layer with 16-bit activations; doubled for fp32), plus the fp32 logits and their gradient.
    An upper estimate where attention runs as one fused kernel (its 5 a s / h term is not kept)."""
    s, b, h, a = model.block_size, micro_batch_size, model.n_embd, model.n_head
    state = ADAMW_STATE_BYTES * model.num_params(non_embedding=False)
    scale = 2.0 if precision == "fp32" else 1.0
    layers = model.n_layer * s * b * h * (34 + 5 * a * s / h) * scale
    logits = 2 * 4 * b * s * model.padded_vocab_size
    return {"weights_grads_adamw": int(state), "activations": int(layers + logits), "total": int(state + layers + logits)}


def _mb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def dry_run(cfg: Config, world_size: int = 1, precision: str = "fp32") -> DryRun:
    """The plan of `cfg` (raises UserError as the run would)."""
    meta = built_cache_meta(cfg)
    train_tokens = meta["train_tokens"] if meta else None
    vocab = meta["vocab_size"] if meta else (257 if cfg.data.tokenizer == "byte" else cfg.data.vocab_size)
    model = GPTConfig.build(cfg.model, vocab)
    n_params = model.num_params()
    memory = memory_estimate(model, cfg.trainer.micro_batch_size, precision)
    plan = None
    if cfg.trainer.epochs is None or train_tokens is not None:
        plan = RunPlan.build(cfg, world_size, train_tokens)
    mc = cfg.model
    lines = [f"model: {n_params:,} parameters (without position embeddings), {mc.n_layer} layers, {mc.n_embd} wide, "
             f"{mc.n_head} heads, context {mc.block_size}, vocabulary {vocab}"
             + ("" if meta else " (data.vocab_size: the tokenizer is not trained yet)")]
    if plan is not None:
        lines += plan.lines(cfg.trainer.micro_batch_size, world_size, train_tokens)
    else:
        lines.append(f"run: {cfg.trainer.epochs:g} epochs; the steps, tokens and schedule are known once the data is "
                     "prepared (no token cache yet)")
    if train_tokens is None:
        lines.append(f"data: no token cache yet in {cfg.data.cache_dir} (the first run prepares it), so the epochs are "
                     "not known; the run's first lines give them")
    lines.append(f"memory: about {_mb(memory['total'])} per device ({precision}): weights, gradients and AdamW state "
                 f"{_mb(memory['weights_grads_adamw'])}, activations of a micro-batch of {cfg.trainer.micro_batch_size} "
                 f"x {mc.block_size} {_mb(memory['activations'])} (an estimate)")
    return DryRun(plan, n_params, train_tokens, vocab, memory, lines, _one_line(plan, cfg, n_params, train_tokens, memory))


def _one_line(plan: RunPlan | None, cfg: Config, n_params: int, train_tokens: int | None, memory: dict) -> str:
    if plan is None:
        return f"{cfg.scheduler['name']}, {cfg.trainer.epochs:g} epochs (steps known once the data is prepared); " \
               f"{n_params:,} parameters; memory ~{_mb(memory['total'])}"
    d = plan.schedule.describe()
    epochs = f"{plan.total_tokens / train_tokens:.2f} epochs" if train_tokens else "epochs unknown (no token cache)"
    bounds = sorted(d["phases"].items(), key=lambda kv: kv[1]) + [("", plan.schedule.total_steps)]
    phases = ", ".join(f"{label} {a}..{b - 1}" for (label, a), (_, b) in zip(bounds, bounds[1:]) if a < b)
    return (f"{plan.schedule.name} ({phases}), {plan.total_steps} steps x {plan.global_batch} sequences = {plan.total_tokens:,} "
            f"tokens, {epochs}; peak {plan.peak_lr * d['peak']:.3g} at step {d['peak_step']}, floor "
            f"{plan.peak_lr * d['floor']:.3g} at step {d['floor_step']}; {n_params:,} parameters; "
            f"memory ~{_mb(memory['total'])}")


def write_dry_run(result: DryRun, run_dir: Path) -> None:
    """schedule.png (when the schedule is known) and plan.json in the run folder."""
    from minigpt.plots import plot_schedule_curve

    run_dir.mkdir(parents=True, exist_ok=True)
    if result.plan is not None:
        plot_schedule_curve(result.plan.schedule, result.plan.peak_lr, run_dir / "schedule.png")
    plan = result.plan.describe() if result.plan is not None else None
    (run_dir / "plan.json").write_text(json.dumps(
        {"dry_run": True, "plan": plan, "n_params": result.n_params, "train_tokens": result.train_tokens,
         "vocab_size": result.vocab_size, "memory_bytes": result.memory}, indent=2))
