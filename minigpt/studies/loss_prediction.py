"""Using a fitted loss law (minigpt/studies/loss_law.py) on minigpt runs: read a run's curve, plan the
LRs of a config, draw fitted and predicted curves, and search for the schedule with the lowest
predicted final loss. `minigpt predict` (minigpt/tools/predict.py) is the command line on top of it.

Configs come in as train.py overrides; turning them into a validated Config is the caller's job
(Hydra's compose at the command-line edge), passed here as `compose(overrides) -> Config`.
"""

from __future__ import annotations

from pathlib import Path
import dataclasses
from typing import Callable

import numpy as np

from minigpt.studies import loss_law
from minigpt.errors import UserError
from minigpt.run.metrics import read_metrics

Composer = Callable[[list[str]], object]  # train.py overrides -> a validated minigpt.config.Config


# --- reading runs ---


def read_run(run_dir: Path, target: str = "val", smoothing: float = 0.9, every: int = 10) -> tuple[loss_law.Curve, list[str]]:
    """A run's curve (the LR of every update; the loss at the measured steps) and its train.py
    overrides. `target` "val": val/loss at the evaluation steps; "train": an exponential moving
    average of train/loss (bias-corrected), every `every` steps."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"'{run_dir}' is not a run directory; give the folder a run wrote (it holds metrics.jsonl)")
    records = read_metrics(run_dir)
    lr_of = {r["step"]: r["train/lr"] for r in records if "step" in r and r.get("train/lr") is not None}
    if not lr_of:
        raise UserError(f"'{run_dir}' has no LR records (no train/lr in {run_dir / 'metrics.jsonl'}); "
                        "give a run directory of train.py whose metrics.jsonl holds per-step records")
    total = max(lr_of) + 1
    missing = [s for s in range(total) if s not in lr_of]
    if missing:
        raise UserError(f"'{run_dir}': train/lr is missing for {len(missing)} of steps 0..{total - 1} (first: "
                        f"{missing[0]}); the laws need the LR of every update")
    lrs = np.array([lr_of[s] for s in range(total)])
    if target == "val":
        points = sorted({r["step"]: r["val/loss"] for r in records
                         if r.get("val/loss") is not None and r.get("step", -1) <= total}.items())
    else:
        losses = sorted((r["step"], r["train/loss"]) for r in records if r.get("train/loss") is not None)
        points, ema = [], 0.0
        for i, (step, loss) in enumerate(losses):
            ema = smoothing * ema + (1 - smoothing) * loss
            if (step + 1) % every == 0:
                points.append((step + 1, ema / (1 - smoothing ** (i + 1))))  # the loss after step + 1 updates
    steps = np.array([s for s, _ in points], dtype=np.int64)
    losses = np.array([v for _, v in points], dtype=np.float64)
    overrides = []
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if overrides_file.exists():
        import yaml

        overrides = [str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])]
    return loss_law.Curve(lrs, steps, losses, label=run_dir.name), overrides


# --- overrides ---


def key_of(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def merge_overrides(base: list[str], extra: list[str]) -> list[str]:
    """`base` with the keys `extra` sets replaced; choosing a scheduler drops the base's scheduler.* keys."""
    extra_keys = {key_of(o) for o in extra}
    new_schedule = "scheduler" in extra_keys
    kept = [o for o in base if key_of(o) not in extra_keys and not (new_schedule and key_of(o).startswith("scheduler."))]
    return kept + list(extra)


RUN_ONLY_KEYS = ("hydra.", "trainer.resume", "trainer.progress", "trainer.threads", "data.cache_dir",
                 "trainer.eval_interval", "trainer.eval_iters", "trainer.ckpt_interval", "seed", "logger.")


def schedule_overrides(overrides: list[str]) -> list[str]:
    """A run's overrides without those that leave its LRs alone (folders, logging, evaluation, seed)."""
    return [o for o in overrides if not any(key_of(o).startswith(k) for k in RUN_ONLY_KEYS)]


def planned_lrs(config) -> np.ndarray:
    """The LR of each update of the run a (validated) Config describes, as the trainer applies it
    (minigpt/plan.py: the peak after the batch-size rule times the schedule at each update)."""
    from minigpt.plan import RunPlan

    if config.trainer.max_steps is None and config.trainer.max_tokens is None:
        raise UserError("trainer.epochs: the run length depends on the corpus; give trainer.max_steps=... "
                        "(or trainer.max_tokens) to predict it")
    plan = RunPlan.build(config)
    lrs, tokens = np.empty(plan.total_steps), 0
    for step in range(plan.total_steps):
        lrs[step] = plan.lr_at(step, tokens)[0]
        tokens += plan.batches.batch_at(tokens) * config.model.block_size
    return lrs


# --- searching schedules ---


def final_loss(fit: loss_law.Fit, lrs: np.ndarray) -> float:
    return float(fit.predict(lrs, [len(lrs)])[0])


WSD_SHAPES = ("linear", "cosine", "1-sqrt")
WSD_FRACTIONS = tuple(round(f, 2) for f in np.arange(0.05, 0.91, 0.05))
WSD_FLOORS = (0.0, 0.01, 0.03, 0.1, 0.3)


def search_wsd(fit: loss_law.Fit, compose: Composer, base: list[str]) -> tuple[list[str], float, int]:
    """Grid search over warmup-stable-decay: the cooldown's length (5% to 90% of the run), shape and
    floor; the warmup, peak LR and run length stay those of `base`. Returns the best overrides,
    their predicted final loss and how many candidates were tried."""
    config = compose(merge_overrides(base, ["scheduler=wsd"]))
    tried = []
    for shape in WSD_SHAPES:
        for fraction in WSD_FRACTIONS:
            for floor in WSD_FLOORS:
                params = {"decay": float(fraction), "decay_shape": shape, "min_lr_ratio": floor}
                try:
                    lrs = planned_lrs(dataclasses.replace(config, scheduler={**config.scheduler, **params}))
                except UserError:
                    continue  # e.g. a cooldown longer than what follows the warmup
                tried.append((params, final_loss(fit, lrs)))
    if not tried:
        raise UserError("no warmup-stable-decay schedule fits this run (is the warmup longer than 95% of it?)")
    params, loss = min(tried, key=lambda t: t[1])
    return ["scheduler=wsd"] + [f"scheduler.{k}={v}" for k, v in params.items()], loss, len(tried)


def search_free(fit: loss_law.Fit, compose: Composer, base: list[str], knots: int = 24) -> tuple[list[str], float]:
    """A free monotone schedule: after the warmup, the multiplier at `knots` evenly spaced steps,
    each at most the one before (a running product of factors in [0, 1]), linear in between;
    minimised by L-BFGS-B from a few starting shapes. The warmup, peak LR and run length stay
    those of `base`. Written as the `table` schedule (minigpt/studies/lr_table.py) with knots as fractions
    of the run; returns its overrides and the predicted final loss of what train.py will run."""
    from scipy.optimize import minimize

    reference = planned_lrs(compose(base))
    total, peak = len(reference), float(reference.max())
    warmup_end = loss_law.warmup_length(reference)  # the first update at the peak
    warmup = reference[:warmup_end] / peak
    if warmup_end > 2 and not np.allclose(np.linspace(warmup[0], warmup[-1], warmup_end), warmup, rtol=1e-6):
        raise UserError("--family free keeps the runs' warmup as two knots of a table, so it must be linear; "
                        "use --family wsd for this warmup shape")
    positions = np.unique(np.linspace(warmup_end, total - 1, knots + 1).round().astype(int))
    after = np.arange(warmup_end, total)

    def lrs_of(factors):
        values = np.concatenate([[1.0], np.cumprod(factors)])
        return peak * np.concatenate([warmup, np.interp(after, positions, values)])

    n = len(positions) - 1
    best = None
    for start in (np.full(n, 0.97), np.full(n, 0.9), np.r_[np.ones(n // 2), np.full(n - n // 2, 0.7)]):
        res = minimize(lambda f: final_loss(fit, lrs_of(f)), start, method="L-BFGS-B", bounds=[(0.0, 1.0)] * n)
        if best is None or res.fun < best.fun:
            best = res
    values = np.concatenate([[1.0], np.cumprod(best.x)])
    steps = ([0, warmup_end - 1] if warmup_end > 1 else [0] if warmup_end else []) + positions.tolist()
    head = [float(warmup[0]), float(warmup[-1])] if warmup_end > 1 else [float(warmup[0])] if warmup_end else []
    overrides = ["scheduler=custom", "scheduler.module=minigpt.studies.lr_table", "scheduler.name=table",
                 "+scheduler.knots=[" + ",".join(f"{s / total:.6g}" for s in steps) + "]",
                 "+scheduler.values=[" + ",".join(f"{v:.5g}" for v in head + values.tolist()) + "]"]
    return overrides, final_loss(fit, planned_lrs(compose(merge_overrides(base, overrides))))


# --- figures ---


def curve_steps(total: int, points: int = 200) -> np.ndarray:
    """Steps at which a predicted curve is drawn: evenly spread, the last step included."""
    return np.unique(np.linspace(1, total, min(points, total)).round().astype(np.int64))


def plot_curves(path: Path, title: str, fit: loss_law.Fit, curves: list[tuple[str, np.ndarray, loss_law.Curve | None]],
                points: int = 200, note: str = "") -> list[dict]:
    """Predicted curves (one per (label, lrs, measured or None)) on one figure, measured points
    beside them; returns per curve the label, steps, predicted final loss, measured final loss
    (nan when not measured at the last step) and the predicted curve."""
    from minigpt.plots import new_figure, save_figure

    fig = new_figure(8, 7)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax_loss.set_title(title, fontsize=10)
    ax_loss.set_ylabel("validation loss (nats)")
    ax_lr.set_ylabel("LR")
    ax_lr.set_xlabel("step (optimizer updates)")
    results, shown = [], []
    for i, (label, lrs, measured) in enumerate(curves):
        steps = curve_steps(len(lrs), points)
        predicted = fit.predict(lrs, steps)
        result = {"label": label, "steps": int(len(lrs)), "final_loss": float(predicted[-1]),
                  "curve": {"step": steps.tolist(), "loss": [round(float(v), 5) for v in predicted]}}
        color = f"C{i % 10}"
        text = f"{label}: predicted {predicted[-1]:.3f}"
        if measured is not None:
            at_end = measured.losses[measured.steps == len(lrs)]
            result["measured_final_loss"] = float(at_end[0]) if len(at_end) else float("nan")
            keep = measured.steps >= max(1, len(lrs) // 10)
            ax_loss.plot(measured.steps[keep], measured.losses[keep], "o", ms=3, color=color)
            shown.extend(measured.losses[keep])
            text += f", measured {result['measured_final_loss']:.3f}"
        ax_loss.plot(steps, predicted, "-", color=color, label=text)
        shown.extend(predicted[steps >= max(1, len(lrs) // 10)])
        ax_lr.plot(np.arange(len(lrs)), lrs, color=color)
        results.append(result)
    low, high = float(np.min(shown)), float(np.max(shown))
    ax_loss.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    ax_loss.legend(fontsize=8, title=note or None, title_fontsize=8)
    ax_loss.grid(alpha=0.3)
    save_figure(fig, path)
    return results
