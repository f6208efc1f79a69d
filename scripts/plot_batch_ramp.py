"""Draw a batch-size ramp and what it does to the LR, against tokens.

    python scripts/plot_batch_ramp.py --out docs/images/batch_ramp.png

Three runs of the same token budget and schedule: a constant batch; a GPT-3-style ramp with the
schedule counted in updates (the LR curve is stretched over the extra small updates); and the
same ramp with `trainer.schedule_unit=tokens` (the LR at every token is the planned one). Pure
functions only (minigpt.plan, minigpt.schedules): nothing is trained.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minigpt.plan import BatchPlan
from minigpt.config import TrainerConfig, parse_count
from minigpt.plots import new_figure
from minigpt.schedules import schedule_from_config


def curve(plan: BatchPlan, total_tokens: int, scheduler: dict, unit: str):
    steps = plan.updates_for(total_tokens)
    schedule = schedule_from_config(scheduler, plan.schedule_steps(steps, unit), plan.final_tokens)
    tokens, batch, lr, seen = [], [], [], 0
    for step in range(steps):
        tokens.append(seen)
        batch.append(plan.batch_at(seen))
        lr.append(schedule(plan.schedule_position(step, seen, unit)))
        seen += batch[-1] * plan.block_size
    return tokens, batch, lr, steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="50M", help="token budget of the run")
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256, help="full global batch, sequences")
    ap.add_argument("--ramp-start", type=int, default=16, help="global batch at token 0, sequences")
    ap.add_argument("--ramp-tokens", default="15M")
    ap.add_argument("--warmup", default="5M tokens")
    ap.add_argument("--out", type=Path, default=Path("batch_ramp.png"))
    args = ap.parse_args(argv)

    total = parse_count(args.tokens, "--tokens")
    scheduler = {"name": "cosine_warmup", "warmup": args.warmup}
    flat = TrainerConfig(micro_batch_size=args.micro_batch, batch_size=args.batch)
    ramp = TrainerConfig(micro_batch_size=args.micro_batch, batch_size=args.batch,
                         batch_ramp_start=args.ramp_start, batch_ramp_tokens=args.ramp_tokens)
    runs = [("constant batch", BatchPlan.from_config(flat, 1, args.block_size), "steps", "0.3"),
            ("ramp, schedule in updates", BatchPlan.from_config(ramp, 1, args.block_size), "steps", "C3"),
            ("ramp, schedule in tokens", BatchPlan.from_config(ramp, 1, args.block_size), "tokens", "C0")]
    fig = new_figure(8, 5.5)
    ax_b, ax_lr = fig.subplots(2, 1, sharex=True)
    for label, plan, unit, color in runs:
        tokens, batch, lr, steps = curve(plan, total, scheduler, unit)
        millions = [t / 1e6 for t in tokens]
        ax_b.step(millions, batch, where="post", color=color, lw=1.5, label=f"{label} ({steps} updates)")
        ax_lr.plot(millions, lr, color=color, lw=1.5, ls="--" if unit == "tokens" else "-", label=label)
        print(f"{label}: {steps} updates, LR multiplier at 10M tokens "
              f"{lr[next(i for i, t in enumerate(tokens) if t >= 10_000_000)]:.3f}")
    ax_b.set_ylabel("global batch (sequences)")
    ax_b.legend(fontsize=8)
    ax_lr.set_ylabel("LR / peak")
    ax_lr.set_xlabel("tokens seen (millions)")
    ax_lr.legend(fontsize=8)
    for ax in (ax_b, ax_lr):
        ax.grid(alpha=0.3)
    fig.suptitle(f"batch ramp {args.ramp_start} -> {args.batch} sequences over {args.ramp_tokens} tokens, "
                 f"cosine_warmup over {args.tokens} tokens", fontsize=10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
