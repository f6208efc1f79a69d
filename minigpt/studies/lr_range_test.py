"""LR range test (Smith 2017, "Cyclical learning rates"; fastai's lr_find).

Train for a short run while the LR ramps up (the `lr_range_test` schedule: from
`start_lr_ratio * optim.lr` at step 0 to `optim.lr` at the last step), follow a smoothed loss,
and stop once it exceeds `stop_factor` times its minimum. Two suggestions for the peak LR come
out of the curve:

- steepest: the LR where the smoothed loss falls fastest against log(LR), before its minimum;
- minimum / 10: a tenth of the LR at the smoothed minimum (the loss there is about to turn).

The test trains a throwaway copy: it writes records, `lr_range_test.png` and
`lr_range_test.json`, never a checkpoint, so the weights it starts from (fresh, or a
checkpoint given with `trainer.resume`) are left as they were.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minigpt.config import Config
from minigpt.errors import UserError
from minigpt.files import write_atomic
from minigpt.run.keys import Key

RESULT_FILE = "lr_range_test.json"
PLOT_FILE = "lr_range_test.png"


@dataclass
class RangeTestResult:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stop_reason: str  # why the ramp ended ("completed" if it reached the last step)
    steepest_lr: float | None
    min_lr: float | None  # the LR at the smoothed minimum
    suggested_lr: float | None  # min_lr / 10

    def to_dict(self) -> dict:
        return asdict(self)


def smooth(losses: list[float], beta: float) -> list[float]:
    """Exponential moving average with bias correction, so the first values are not pulled to 0."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest(lrs: list[float], smoothed: list[float], skip_start: int) -> tuple[float | None, float | None]:
    """(steepest-descent LR, LR at the minimum) of a smoothed loss-vs-LR curve."""
    values = np.asarray(smoothed, dtype=float)
    finite = np.isfinite(values)
    if finite.sum() <= skip_start + 2:
        return None, None
    lo = skip_start
    hi = lo + int(np.argmin(np.where(finite[lo:], values[lo:], np.inf)))  # index of the minimum
    min_lr = lrs[hi]
    if hi - lo < 2:
        return None, min_lr
    log_lr = np.log(np.asarray(lrs[lo:hi + 1], dtype=float))
    slope = np.gradient(values[lo:hi + 1], log_lr)
    return float(lrs[lo + int(np.argmin(slope))]), min_lr


def run_lr_range_test(cfg: Config, run_dir: Path, quiet: bool = False) -> RangeTestResult:
    from minigpt.plots import plot_lr_range_test
    from minigpt.run.trainer import Trainer

    if cfg.scheduler.get("name") != "lr_range_test":
        raise UserError(f"task=lr_range_test needs scheduler=lr_range_test, got scheduler={cfg.scheduler.get('name')}; "
                        "use experiment=lr_range_test")
    rc = cfg.lr_range_test
    trainer = Trainer(cfg, run_dir, quiet=quiet, checkpoints=False)
    lrs, losses, smoothed = [], [], []
    state = {"ema": 0.0, "best": math.inf}  # the EMA before bias correction; the smoothed minimum

    def watch(record: dict) -> str | None:
        if Key.LOSS not in record:
            return None
        loss, lr = record[Key.LOSS], record[Key.LR]
        lrs.append(lr)
        losses.append(loss)
        if not math.isfinite(loss):
            smoothed.append(math.nan)
            return f"loss is {loss} at LR {lr:.3g}"
        state["ema"] = rc.smoothing * state["ema"] + (1 - rc.smoothing) * loss  # as smooth() does
        value = state["ema"] / (1 - rc.smoothing ** len(losses))
        smoothed.append(value)
        state["best"] = min(state["best"], value)
        if len(losses) > rc.skip_start and value > rc.stop_factor * state["best"]:
            return f"smoothed loss {value:.3f} > {rc.stop_factor:g} x its minimum {state['best']:.3f} at LR {lr:.3g}"
        return None

    trainer.watchers.append(watch)
    run = trainer.run()
    reason = run.summary.get("reason") if run.status == "stopped" else run.status
    steepest, min_lr = suggest(lrs, smoothed, rc.skip_start)
    result = RangeTestResult(lrs, losses, smoothed, reason, steepest, min_lr,
                             min_lr / 10 if min_lr is not None else None)
    run_dir = Path(run_dir)
    if trainer.ddp.is_main:
        write_atomic(run_dir / RESULT_FILE, json.dumps(result.to_dict(), indent=1, default=float) + "\n")
        plot_lr_range_test(result, run_dir / PLOT_FILE)
    return result
