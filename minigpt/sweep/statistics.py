"""Study statistics of a sweep: arms (architecture x warmup), their curves of final loss
against the peak LR, and the LR sensitivity of Wortsman et al. 2023 ("Small-scale proxies for
large-scale Transformer training instabilities"):

    sensitivity = mean over LRs of min(final loss, initial loss)  -  best final loss

A run that diverged has no final loss and counts as its initial loss, so an arm that only
trains in a narrow band of LRs has a large sensitivity. The best final loss is either the
arm's own (how much the LR matters to this arm) or the best of all arms (how much is lost
by picking this arm and an LR from the grid at random).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from minigpt.config import config_from_dict
from minigpt.errors import UserError
from minigpt.plan import RunPlan
from minigpt.sweep.jobs import Job, number

# --- the LR sensitivity of Wortsman et al. 2023 -----------------------------------------------


def clipped_loss(final: float | None, initial: float) -> float:
    """min(final loss, initial loss); a run without a final loss (diverged) counts as its initial loss."""
    if final is None or not math.isfinite(final):
        return initial
    return min(final, initial)


def lr_sensitivity(curve: Mapping[float, float], best: float | None = None) -> float:
    """Mean over the LRs of the (clipped) final loss minus the best final loss.

    curve: peak LR -> min(final loss, initial loss), already averaged over seeds.
    best: the reference best loss; None takes the curve's own minimum.
    """
    if not curve:
        raise ValueError("lr_sensitivity needs at least one LR")
    values = list(curve.values())
    reference = min(values) if best is None else best
    return statistics.fmean(values) - reference


# --- the warmup-divergence study --------------------------------------------------------------


def architecture(job: Job) -> str:
    """A short name of the model's stability-relevant choices, e.g. 'pre-LN+QK-LN'."""
    norm = job.get("model.norm_position", "pre")
    name = f"{norm}-LN"
    if job.get("model.qk_layernorm"):
        name += "+QK-LN"
    z = number(job.get("model.z_loss"))
    if z:
        name += f"+z-loss {z:g}"
    return name


def warmup_steps(job: Job) -> int | None:
    """The job's warmup in steps as its trainer built it (0 for schedules without one).

    Read from the run plan in summary.json; a job that never wrote one (it failed before its
    start) gets the plan rebuilt from its config, on one rank, by the trainer's own code."""
    plan = (job.summary or {}).get("plan")
    if isinstance(plan, Mapping) and "warmup_steps" in plan:
        return int(plan["warmup_steps"])
    try:
        return RunPlan.build(config_from_dict(job.config)).warmup_steps
    except (UserError, TypeError, ValueError):
        return None


def warmup_label(steps: int | None, total: int | None) -> str:
    if steps is None:
        return "warmup ?"
    if steps == 0:
        return "no warmup"
    share = f" ({steps / total:.0%})" if total else ""
    return f"warmup {steps} steps{share}"


@dataclass
class Cell:
    """The seeds of one (architecture, warmup, LR) cell."""

    arch: str
    warmup: int | None
    lr: float
    jobs: list[Job] = field(default_factory=list)

    def usable(self) -> list[Job]:
        """Jobs that say something about the LR: they completed or diverged (not crashed, killed)."""
        return [j for j in self.jobs if j.status in ("completed", "diverged") and j.initial_loss is not None]

    def clipped(self) -> list[float]:
        return [clipped_loss(j.final_val_loss, j.initial_loss) for j in self.usable()]

    @property
    def n_diverged(self) -> int:
        return sum(j.status == "diverged" for j in self.jobs)


@dataclass
class Study:
    jobs: list[Job]
    cells: dict[tuple[str, int | None, float], Cell]
    archs: list[str]
    warmups: list[int | None]
    lrs: list[float]
    total_steps: int | None
    early_steps: int  # the early window: early peak loss over steps 0..early_steps-1

    def arm(self, arch: str, warmup) -> dict[float, Cell]:
        return {lr: self.cells[(arch, warmup, lr)] for lr in self.lrs if (arch, warmup, lr) in self.cells}

    def arms(self) -> list[tuple[str, int | None]]:
        return [(a, w) for a in self.archs for w in self.warmups if self.arm(a, w)]

    def curve(self, arch: str, warmup) -> dict[float, float]:
        """LR -> mean over seeds of min(final, initial), for the LRs with at least one usable seed."""
        return {lr: statistics.fmean(c.clipped()) for lr, c in self.arm(arch, warmup).items() if c.clipped()}

    def best_overall(self) -> float | None:
        values = [v for a, w in self.arms() for v in self.curve(a, w).values()]
        return min(values) if values else None


def build_study(jobs: Sequence[Job], early_steps: int | None = None) -> Study | None:
    """Group the jobs by architecture, warmup and peak LR; None unless both LR and warmup vary."""
    cells: dict = {}
    for j in jobs:
        lr = j.get("optim.lr")
        lr = number(lr)
        if lr is None:
            continue
        key = (architecture(j), warmup_steps(j), lr)
        cells.setdefault(key, Cell(*key)).jobs.append(j)
    lrs = sorted({k[2] for k in cells})
    warmups = sorted({k[1] for k in cells}, key=lambda w: (w is None, w or 0))
    if len(lrs) < 2 or len(warmups) < 2:
        return None
    order = ["pre-LN", "post-LN", "pre-LN+QK-LN"]
    archs = sorted({k[0] for k in cells}, key=lambda a: (order.index(a) if a in order else len(order), a))
    totals = [j.total_steps for j in jobs if j.total_steps]
    total = max(totals) if totals else None
    if early_steps is None:
        # The window in which the arms' LRs differ on the way up: the longest warmup.
        longest = max((w for w in warmups if w), default=0)
        early_steps = longest if longest > 0 else (max(1, round(0.1 * total)) if total else 100)
    return Study(list(jobs), cells, archs, warmups, lrs, total, early_steps)


def pick_high_lr(study: Study) -> float:
    """The LR of the early-curves figure: the highest LR at which the longest warmup trained on
    every seed of every architecture (where warmup visibly helps); else the middle LR."""
    longest = study.warmups[-1]
    for lr in reversed(study.lrs):
        cells = [study.cells.get((a, longest, lr)) for a in study.archs]
        cells = [c for c in cells if c is not None and c.jobs]
        if cells and all(j.status == "completed" for c in cells for j in c.jobs):
            return lr
    return study.lrs[len(study.lrs) // 2]
