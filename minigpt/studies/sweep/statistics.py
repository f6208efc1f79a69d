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
from minigpt.studies.sweep.jobs import Job, number

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
    """Group the jobs by architecture, warmup and peak LR; None unless the warmup varies."""
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
    if len(warmups) < 2 or not lrs:  # a study compares warmups, at one peak LR or several
        return None
    order = ["pre-LN", "post-LN", "pre-LN+QK-LN"]
    archs = sorted({k[0] for k in cells}, key=lambda a: (order.index(a) if a in order else len(order), a))
    totals = [j.total_steps for j in jobs if j.total_steps]
    total = max(totals) if totals else None
    if early_steps is None:
        # The window in which every warmup arm is still on its way up: the shortest warmup.
        shortest = min((w for w in warmups if w), default=0)
        early_steps = shortest if shortest > 0 else (max(1, round(0.1 * total)) if total else 100)
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


# --- the signatures the study looks for, seed by seed -------------------------------------------

TRAINS_WELL = 0.80  # a run trains well when it completes at or below this fraction of the unigram entropy
LASTING_GAP = 0.2  # nats: a no-warmup run this much worse than its warmup twin lost something lasting
AT_UNIGRAM = 0.1  # nats: a run that ends within this of the unigram entropy (or above it) learned nothing


def trains_well(job: Job) -> bool:
    final, entropy = job.final_val_loss, job.unigram_entropy
    return final is not None and entropy is not None and final <= TRAINS_WELL * entropy


def failed_to_train(job: Job) -> bool:
    """Diverged, stuck, or ended at the unigram level."""
    if job.status == "diverged":
        return True
    final, entropy = job.final_val_loss, job.unigram_entropy
    return final is not None and entropy is not None and final >= entropy - AT_UNIGRAM


def outcome(job: Job | None) -> str:
    """'4.512', 'stuck', 'diverged at 37', or for a run that has not finished its latest
    validation loss ('5.012 at step 300, interrupted'): what one run ended with, for the tables."""
    if job is None:
        return "–"
    if job.final_val_loss is not None:
        return f"{job.final_val_loss:.3f}"
    if job.stuck:
        return "stuck"
    if job.status == "diverged":
        return f"diverged at {job.diverged_step}" if job.diverged_step is not None else "diverged"
    latest = [r for r in job.val_records if r["step"] > 0]
    if latest:
        return f"{latest[-1]['val/loss']:.3f} at step {latest[-1]['step']}, {job.status}"
    return job.status


@dataclass
class SeedPair:
    """The same arch, peak LR and seed, trained without and with one warmup."""

    arch: str
    lr: float
    warmup: int
    seed: str
    no_warmup: Job
    with_warmup: Job

    @property
    def gap(self) -> float | None:
        """Final loss without warmup minus with it (None unless both completed)."""
        a, b = self.no_warmup.final_val_loss, self.with_warmup.final_val_loss
        return a - b if a is not None and b is not None else None

    @property
    def common_step(self) -> int | None:
        """The latest evaluation step after the start that both runs reached (for unfinished runs)."""
        a = {r["step"] for r in self.no_warmup.val_records}
        b = {r["step"] for r in self.with_warmup.val_records}
        return max((s for s in a & b if s > 0), default=None)

    @property
    def gap_so_far(self) -> float | None:
        """Validation loss without warmup minus with it at the latest step both reached."""
        step = self.common_step
        if step is None:
            return None
        a, b = self.no_warmup.val_loss_at(step), self.with_warmup.val_loss_at(step)
        return a - b if a is not None and b is not None else None

    @property
    def lasting_gap(self) -> bool:
        """Warmup trains well, and no warmup ends >= LASTING_GAP nats worse, or diverges or sticks."""
        if not trains_well(self.with_warmup):
            return False
        return failed_to_train(self.no_warmup) or (self.gap is not None and self.gap >= LASTING_GAP)

    @property
    def rescued(self) -> bool:
        """No warmup fails to train at all; warmup trains well."""
        return failed_to_train(self.no_warmup) and trains_well(self.with_warmup)


def seed_pairs(study: Study, arch: str, lr: float, warmup: int) -> list[SeedPair]:
    """Runs matched by seed between the no-warmup cell and one warmup cell at the same arch and LR."""
    bare, warm = study.cells.get((arch, 0, lr)), study.cells.get((arch, warmup, lr))
    if bare is None or warm is None:
        return []
    by_seed = {str(j.get("seed")): j for j in warm.jobs if j.status != "failed"}
    pairs = [SeedPair(arch, lr, warmup, str(j.get("seed")), j, by_seed[str(j.get("seed"))])
             for j in bare.jobs if j.status != "failed" and str(j.get("seed")) in by_seed]
    return sorted(pairs, key=lambda p: p.seed)


@dataclass
class Signature:
    """Where a signature holds on every seed: (arch, LR, warmup steps, seeds)."""

    name: str
    holds: list[tuple[str, float, int, int]]


def signatures(study: Study) -> list[Signature]:
    """For every (arch, LR, warmup) with at least 3 matched seeds: does warmup leave a lasting
    gap on every seed, and does it rescue a run that fails without it on every seed?"""
    gap, rescue = Signature("lasting gap", []), Signature("rescue", [])
    for arch in study.archs:
        for lr in study.lrs:
            for w in study.warmups:
                if not w:
                    continue
                pairs = seed_pairs(study, arch, lr, w)
                if len(pairs) < 3:
                    continue
                if all(p.lasting_gap for p in pairs):
                    gap.holds.append((arch, lr, w, len(pairs)))
                if all(p.rescued for p in pairs):
                    rescue.holds.append((arch, lr, w, len(pairs)))
    return [gap, rescue]


def sensitivity_per_seed(study: Study, arch: str, warmup) -> dict[str, float]:
    """Wortsman's LR sensitivity of one arm computed seed by seed (each seed's own best), for the
    seeds that have a usable run at every LR of the study."""
    per_seed: dict[str, dict[float, float]] = {}
    for lr, cell in study.arm(arch, warmup).items():
        for j in cell.usable():
            per_seed.setdefault(str(j.get("seed")), {})[lr] = clipped_loss(j.final_val_loss, j.initial_loss)
    return {seed: lr_sensitivity(curve) for seed, curve in sorted(per_seed.items())
            if len(curve) == len(study.lrs) and len(study.lrs) >= 3}


def early_window(pair: SeedPair) -> dict[str, float | int | None]:
    """The first updates compared two ways, since a warmup cannot match both at once:

    - same steps: mean training loss over the last 10 steps of the warmup (steps W-10..W-1),
      with and without warmup; the run without warmup has had twice the LR exposure by then;
    - same LR exposure: the run without warmup at the step where its summed LR reaches what the
      warmup run had summed by step W (about W/2 for a linear warmup), over its 10 steps before.
    """
    w = pair.warmup
    exposure = pair.with_warmup.lr_exposure(w)
    matched = pair.no_warmup.lr_exposure_step(exposure)
    window = min(10, w)
    return {
        "steps": w,
        "warmup_loss": pair.with_warmup.mean_train_loss(w - window, w),
        "no_warmup_same_steps": pair.no_warmup.mean_train_loss(w - window, w),
        "matched_step": matched,
        "no_warmup_same_exposure": (pair.no_warmup.mean_train_loss(max(0, matched - window), matched)
                                    if matched else None),
    }
