"""Loss curves predicted from the LR schedule alone: the multi-power law and the momentum law.

Both laws say how the loss after t optimizer updates depends on the LRs of those updates, with a
handful of constants fitted on one to three measured runs. Once fitted, they predict the loss
curve of a schedule that was never run (docs/loss_prediction.md).

Multi-power law (Luo et al., ICLR 2025, arXiv 2503.12811):

    L(t) = L0 + A (S1(t) + S_W)^(-alpha) - LD(t)
    LD(t) = B sum_{k=1..t} (eta_{k-1} - eta_k) G(eta_k^(-gamma) S_k(t)),   G(x) = 1 - (C x + 1)^(-beta)
    S_k(t) = sum_{tau=k..t} eta_tau

where S_W is the sum of the warmup's LRs, S1(t) the sum of the LRs after the warmup, eta_0 the
peak LR the warmup ends at and eta_k the LR of the k-th update after the warmup.

Momentum law (Tissue et al. 2024, "Scaling Law with Learning Rate Annealing", arXiv 2408.11029):

    L(t) = L0 + A S1(t)^(-alpha) - C S2(t)
    S2(t) = sum_{i=1..t} m_i,   m_i = lambda m_{i-1} + (eta_{i-1} - eta_i)

S1 is the area under the LR curve and S2 the annealing area: each drop of the LR keeps adding
to the loss reduction for a while, fading by lambda per step like a momentum.

Conventions here (minigpt's records): `lrs[i]` is the LR of update i (i = 0..T-1, `train/lr` of
step i) and the loss "at step t" is the loss after t updates (`val/loss` of step t). The warmup is
every update before the first one at the schedule's maximum LR; that update is the first one after
the warmup, so eta_0 = eta_1 = the peak. Both laws use the whole LR area S_W + S1(t) (for the
momentum law: S1 with the warmup's area included), and count LR changes only after the warmup,
so the rising warmup adds no negative annealing. Everything is a vectorised function of the LR
sequence: one prediction of a 10^5-step schedule takes a fraction of a second.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minigpt.errors import UserError

HUBER_DELTA = 1e-3  # on log-loss residuals, as in both papers' fits
MIN_LR = 1e-12  # an LR of 0 would put 0^(-gamma) into the multi-power law


def warmup_length(lrs) -> int:
    """Updates before the first one at the maximum LR (0 for a schedule that starts at its peak)."""
    return int(np.argmax(lrs)) if len(lrs) else 0


def lr_drops(lrs) -> np.ndarray:
    """eta_{k-1} - eta_k for each update (0 during the warmup and at its peak update)."""
    lrs = np.asarray(lrs, dtype=np.float64)
    drops = np.zeros_like(lrs)
    p = warmup_length(lrs)
    drops[p + 1:] = lrs[p:-1] - lrs[p + 1:]
    return drops


MAX_CHANGES = 2048  # beyond this many LR changes, neighbouring ones are merged (see LRSequence)


class LRSequence:
    """What both laws need from an LR sequence, computed once (a fit evaluates the laws thousands
    of times on the same sequences).

    area[t]: the sum of the LRs of the first t updates (S_W + S1(t)), t = 0..T.
    changes, drop, area_at_change, log_lr_at_change: the updates after the warmup whose LR
    differs from the previous update's, their drop eta_{k-1} - eta_k, the LR area before them and
    their log LR. Beyond MAX_CHANGES changes (a cosine of more steps), consecutive changes are
    merged into MAX_CHANGES groups of equal count, each with the group's total drop and its
    drop-weighted mean area and log LR. That keeps a 10^5-step prediction fast and moves LD(t)
    by little: 1e-5 nats of 0.21 mid-way through a 10^5-step cosine (peak 1e-3, B = 500, C = 2,
    beta = gamma = 0.5), 2e-8 at its end.
    """

    def __init__(self, lrs):
        self.lrs = np.maximum(np.asarray(lrs, dtype=np.float64), MIN_LR)
        self.area = np.concatenate([[0.0], np.cumsum(self.lrs)])
        self.drops = lr_drops(self.lrs)
        k = np.flatnonzero(self.drops)
        self.changes, self.drop, self.area_at_change = k, self.drops[k], self.area[k]
        self.log_lr_at_change = np.log(self.lrs[k])
        self.grouped = len(k) > MAX_CHANGES
        if self.grouped:
            starts = np.array([g[0] for g in np.array_split(np.arange(len(k)), MAX_CHANGES)])
            total = np.add.reduceat(self.drop, starts)
            safe = np.where(total != 0, total, 1.0)
            self.area_at_change = np.add.reduceat(self.drop * self.area_at_change, starts) / safe
            self.log_lr_at_change = np.add.reduceat(self.drop * self.log_lr_at_change, starts) / safe
            self.changes, self.drop = k[starts], total

    def __len__(self) -> int:
        return len(self.lrs)


def as_sequence(lrs) -> LRSequence:
    return lrs if isinstance(lrs, LRSequence) else LRSequence(lrs)


def loss_reduction(lrs, steps, B: float, C: float, beta: float, gamma: float) -> np.ndarray:
    """The multi-power law's LD(t) at each t of `steps` (t = updates done, 0..len(lrs)).
    Only updates where the LR changes contribute: a WSD schedule costs its cooldown, a cosine
    every step (merged beyond MAX_CHANGES, see LRSequence)."""
    seq = as_sequence(lrs)
    steps = np.asarray(steps, dtype=np.int64)
    if len(seq.changes) == 0:
        return np.zeros(len(steps))
    rate = C * np.exp(-gamma * seq.log_lr_at_change)
    out = np.empty(len(steps))
    rows = max(1, 2**22 // len(seq.changes))  # steps per block: a (steps x changes) block of ~32 MB
    for i in range(0, len(steps), rows):
        t = steps[i:i + rows, None]
        before = seq.changes[None, :] < t  # the changes made before step t
        x = np.maximum(seq.area[t] - seq.area_at_change[None, :], 0.0) * rate[None, :]
        g = 1.0 - np.exp(-beta * np.log1p(x))
        out[i:i + rows] = B * np.sum(np.where(before, seq.drop * g, 0.0), axis=1)
    return out


def multi_power_gradient(lrs, steps, values: dict) -> np.ndarray:
    """The multi-power law's derivatives at `steps` with respect to each parameter's coordinate
    (Param.coordinate: log for A, B, C), rows in the law's order, in one pass over the LR changes
    (a prediction band of a 10^5-step schedule costs about two predictions, not eight)."""
    seq = as_sequence(lrs)
    steps = np.asarray(steps, dtype=np.int64)
    v = values
    power = v["A"] * seq.area[steps] ** (-v["alpha"])
    out = np.zeros((7, len(steps)))
    out[0], out[1], out[2] = 1.0, power, -power * np.log(seq.area[steps])
    if len(seq.changes) == 0:
        return out
    log_lr = seq.log_lr_at_change
    rate = v["C"] * np.exp(-v["gamma"] * log_lr)
    rows = max(1, 2**21 // len(seq.changes))
    for i in range(0, len(steps), rows):
        t = steps[i:i + rows, None]
        weight = np.where(seq.changes[None, :] < t, seq.drop, 0.0)
        x = np.maximum(seq.area[t] - seq.area_at_change[None, :], 0.0) * rate[None, :]
        log1p_x = np.log1p(x)
        keep = np.exp(-v["beta"] * log1p_x)  # (1 + x)^-beta
        slope = v["beta"] * keep / (1.0 + x) * x  # x dG/dx
        block = slice(i, i + rows)
        out[3, block] = -v["B"] * np.sum(weight * (1.0 - keep), axis=1)  # d/dlog B = -LD
        out[4, block] = -v["B"] * np.sum(weight * slope, axis=1)
        out[5, block] = -v["B"] * np.sum(weight * keep * log1p_x, axis=1)
        out[6, block] = v["B"] * np.sum(weight * slope * log_lr[None, :], axis=1)
    return out


def annealing_area(lrs, lam: float) -> np.ndarray:
    """The momentum law's S2 after t updates, t = 0..T: m_i = lam m_{i-1} + drop_i, S2 = sum m_i."""
    from scipy.signal import lfilter

    momentum = lfilter([1.0], [1.0, -lam], as_sequence(lrs).drops)
    return np.concatenate([[0.0], np.cumsum(momentum)])


def multi_power_loss(lrs, steps, L0, A, alpha, B, C, beta, gamma) -> np.ndarray:
    seq = as_sequence(lrs)
    steps = np.asarray(steps, dtype=np.int64)
    return L0 + A * seq.area[steps] ** (-alpha) - loss_reduction(seq, steps, B, C, beta, gamma)


def momentum_loss(lrs, steps, L0, A, alpha, C, lam) -> np.ndarray:
    seq = as_sequence(lrs)
    steps = np.asarray(steps, dtype=np.int64)
    return L0 + A * seq.area[steps] ** (-alpha) - C * annealing_area(seq, lam)[steps]


@dataclass(frozen=True)
class Param:
    name: str
    low: float  # bounds of the bounded procedure, in the parameter's coordinate
    high: float
    # The coordinate a fit moves the parameter in: "linear"; "log" for a scale unknown by orders
    # of magnitude (a step is a relative change); "log1m" for a memory factor just below 1
    # (log(1 - v): 0.99 and 0.999 are as far apart as 0.9 and 0.99).
    coordinate: str = "linear"

    def to_value(self, x: float) -> float:
        if self.coordinate == "log":
            return math.exp(x)
        if self.coordinate == "log1m":
            return 1.0 - math.exp(x)
        return x

    def to_coordinate(self, v: float) -> float:
        if self.coordinate == "log":
            return math.log(v)
        if self.coordinate == "log1m":
            return math.log(1.0 - v)
        return v


@dataclass(frozen=True)
class Law:
    name: str
    params: tuple[Param, ...]
    function: object  # fn(lrs, steps, *values) -> losses
    paper: str
    coefficient: str  # the decay term's linear coefficient (fitted by regression in the published start)
    shape_starts: tuple[dict, ...]  # the decay term's other parameters: the published start's candidates

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def __call__(self, values: dict, lrs, steps) -> np.ndarray:
        return self.function(lrs, steps, *(values[n] for n in self.names))

    def coordinates(self, values: dict) -> np.ndarray:
        return np.array([p.to_coordinate(values[p.name]) for p in self.params])

    def values(self, x) -> dict:
        return {p.name: p.to_value(float(v)) for p, v in zip(self.params, x)}


# Bounds (of the bounded procedure) wide enough for LRs from 1e-5 to 1e-1 and losses of a few
# nats; L0's upper bound is set per fit to the highest observed loss.
LAWS = {
    "multi_power": Law(
        "multi_power",
        (Param("L0", 0.0, 20.0), Param("A", -12.0, 12.0, "log"), Param("alpha", 0.01, 3.0),
         Param("B", -12.0, 16.0, "log"), Param("C", -12.0, 16.0, "log"), Param("beta", 0.01, 5.0),
         Param("gamma", 0.0, 1.5)),
        multi_power_loss,
        "Luo et al., A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules, ICLR 2025",
        "B", ({"C": 1.0, "beta": 0.5, "gamma": 0.5},),  # the paper's start
    ),
    "momentum": Law(
        "momentum",
        (Param("L0", 0.0, 20.0), Param("A", -12.0, 12.0, "log"), Param("alpha", 0.01, 3.0),
         Param("C", -12.0, 16.0, "log"), Param("lam", math.log(1 - 0.9999), math.log(1 - 0.5), "log1m")),
        momentum_loss,
        "Tissue et al., Scaling Law with Learning Rate Annealing, arXiv 2408.11029",
        "C", ({"lam": 0.9}, {"lam": 0.99}, {"lam": 0.999}),  # the paper uses about 0.999 on long runs
    ),
}

PROCEDURES = ("published", "bounded")
DEFAULT_PROCEDURE = "bounded"  # the better on the evidence so far (docs/loss_prediction.md)
UNIDENTIFIED_ABOVE = 1.0  # relative standard error beyond which a parameter counts as unidentified
# The multi-power paper (Luo et al. 2025) predicts runs up to 3x the fitted length (24k -> 72k steps);
# beyond that a prediction is flagged.
LONGER_THAN_FITTED = 3.0
AT_BOUND_WITHIN = 1e-3  # of the bound interval's width: a bounded fit's parameter this close sits at the bound


def get_law(name: str) -> Law:
    if name not in LAWS:
        raise UserError(f"unknown law '{name}'; valid: {', '.join(LAWS)}")
    return LAWS[name]


@dataclass
class Curve:
    """One measured run: the LR of every update and the loss at some steps (updates done)."""
    lrs: np.ndarray
    steps: np.ndarray
    losses: np.ndarray
    label: str = ""

    def __post_init__(self):
        self.lrs = np.asarray(self.lrs, dtype=np.float64)
        self.steps = np.asarray(self.steps, dtype=np.int64)
        self.losses = np.asarray(self.losses, dtype=np.float64)


def curve_to_dict(curve: Curve) -> dict:
    """A curve as JSON holds it (LRs to 7 significant digits: they are the schedule's, not measured)."""
    return {"label": curve.label, "lrs": [float(f"{v:.7g}") for v in curve.lrs], "steps": curve.steps.tolist(),
            "losses": curve.losses.tolist()}


def curve_from_dict(d: dict) -> Curve:
    return Curve(d["lrs"], d["steps"], d["losses"], d.get("label", ""))


def lr_range(lrs) -> tuple[float, float]:
    """The lowest LR after the warmup and the highest LR of a schedule."""
    lrs = lrs.lrs if isinstance(lrs, LRSequence) else np.asarray(lrs, dtype=np.float64)
    return float(lrs[warmup_length(lrs):].min()), float(lrs.max())


@dataclass
class Fit:
    law: str
    params: dict[str, float]
    stderr: dict[str, float]  # one standard error of each parameter (nan where it cannot be computed)
    rmse: float  # of the fitted curves against the observed points, in nats
    max_error: float
    n_points: int
    restarts: int
    runs: list[dict] = field(default_factory=list)  # what was fitted (labels, steps, LR range, ...)
    procedure: str = "bounded"
    # Standard error over |value| (for L0: over the lowest observed loss; for a log-coordinate
    # parameter: the error of its log, a relative error too); above UNIDENTIFIED_ABOVE the runs
    # do not pin the parameter down.
    relative_stderr: dict[str, float] = field(default_factory=dict)
    at_bound: list[str] = field(default_factory=list)  # at a bound of the bounded procedure
    unidentified: list[str] = field(default_factory=list)
    # The parameters' covariance in their coordinates (Param.coordinate), rows in the law's order;
    # 0 for a parameter held at a bound. None: unknown (an old fit), no prediction band.
    covariance: list[list[float]] | None = None

    def predict(self, lrs, steps=None) -> np.ndarray:
        """The predicted loss after each of `steps` updates (default: every step 1..T)."""
        lrs = as_sequence(lrs)
        if steps is None:
            steps = np.arange(1, len(lrs) + 1)
        return get_law(self.law)(self.params, lrs, steps)

    def end_errors(self, curves: list[Curve]) -> list[tuple[str, int, float]]:
        """(label, step, predicted minus measured) at each curve's last measured point. On the
        curves the law was fitted on, a miss here is the law's shape, not an extrapolation: no
        unseen end can be expected closer."""
        return [(c.label, int(c.steps[-1]), float(self.predict(c.lrs, [int(c.steps[-1])])[0] - c.losses[-1]))
                for c in curves]

    def band(self, lrs, steps=None, z: float = 1.96) -> np.ndarray | None:
        """Half the width of the prediction band at each step: z standard errors of the predicted
        loss, carried from the fit's covariance to the prediction by the delta method. It holds the
        uncertainty of the fitted parameters only, not the run-to-run noise of a new run nor the
        law's own misfit. None for a fit without covariance."""
        return self.predict_with_band(lrs, steps, z)[1]

    def predict_with_band(self, lrs, steps=None, z: float = 1.96) -> tuple[np.ndarray, np.ndarray | None]:
        """predict() and band() together; for the multi-power law in one pass over the LR changes
        (its derivatives hold the prediction), so a 10^5-step schedule costs about two predictions."""
        law = get_law(self.law)
        lrs = as_sequence(lrs)
        if steps is None:
            steps = np.arange(1, len(lrs) + 1)
        if self.covariance is None:
            return self.predict(lrs, steps), None
        cov = np.asarray(self.covariance, dtype=np.float64)
        x = law.coordinates(self.params)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if self.law == "multi_power":
                grads = multi_power_gradient(lrs, steps, self.params)
                base = self.params["L0"] + grads[1] + grads[3]  # L0 + A S^-alpha - LD
            else:  # the momentum law is a linear filter: forward differences are cheap
                base = law(self.params, lrs, steps)
                grads = np.zeros((len(x), len(base)))
                for i in np.flatnonzero(np.diag(cov) > 0):
                    h = 1e-6 * max(1.0, abs(x[i]))
                    moved = x.copy()
                    moved[i] += h
                    grads[i] = (law(law.values(moved), lrs, steps) - base) / h
            used = np.diag(cov) > 0  # a parameter held at a bound adds nothing (and inf * 0 would be nan)
            var = np.einsum("in,ij,jn->n", grads[used], cov[np.ix_(used, used)], grads[used])
        return base, z * np.sqrt(np.where(np.isfinite(var), np.maximum(var, 0.0), np.inf))

    def lr_range(self) -> tuple[float, float] | None:
        """The lowest LR after the warmup and the highest LR of the fitted runs (None: not recorded)."""
        if not self.runs or any("lr_min" not in r for r in self.runs):
            return None
        return min(r["lr_min"] for r in self.runs), max(r["lr_max"] for r in self.runs)

    def warning(self) -> str | None:
        """One line when the fit cannot be trusted to predict other schedules, else None."""
        parts = []
        if self.unidentified:
            parts.append(f"the runs cannot identify {', '.join(self.unidentified)} (a standard error above "
                         f"{UNIDENTIFIED_ABOVE:g}x the value, or no fitted point depends on it)")
        if self.at_bound:
            parts.append(f"{', '.join(self.at_bound)} at a bound of the fit")
        if not parts:
            return None
        return ("fit: " + "; ".join(parts) + ": its predictions of unseen schedules are not reliable (fit on runs "
                "whose LR falls in different ways, or longer runs)")

    def range_warning(self, lrs, label: str = "the schedule") -> str | None:
        """One line when a schedule leaves what the fitted runs covered (their LR range, or more
        than LONGER_THAN_FITTED times the longest run's length), else None."""
        out = []
        longest = max((r.get("steps") or 0 for r in self.runs), default=0)
        if longest and len(lrs) > LONGER_THAN_FITTED * longest:
            out.append(f"runs {len(lrs):,} steps, {len(lrs) / longest:.3g}x the longest fitted run's {longest:,} "
                       f"(predictions were validated up to {LONGER_THAN_FITTED:g}x)")
        fitted = self.lr_range()
        if fitted is None:
            return f"{label}: outside what the fitted runs covered ({'; '.join(out)}): the law extrapolates" if out else None
        low, high = lr_range(lrs)
        (fit_low, fit_high), peak = fitted, fitted[1]
        if low < 0.95 * fit_low:
            out.append(f"goes down to {low / peak:.3g}x the fitted peak, below the fitted runs' lowest {fit_low / peak:.3g}x")
        if high > 1.01 * fit_high:
            out.append(f"peaks at {high:.3g}, above the fitted runs' {fit_high:.3g}")
        if not out:
            return None
        too_long = longest and len(lrs) > LONGER_THAN_FITTED * longest
        what = "what the fitted runs covered" if too_long else "the LR range of the fitted runs"
        return f"{label}: outside {what} ({'; '.join(out)}): the law extrapolates"

    def to_dict(self) -> dict:
        return {"law": self.law, "procedure": self.procedure, "params": self.params, "stderr": self.stderr,
                "relative_stderr": self.relative_stderr, "at_bound": self.at_bound, "unidentified": self.unidentified,
                "rmse": self.rmse, "max_error": self.max_error, "n_points": self.n_points, "restarts": self.restarts,
                "runs": self.runs, "covariance": self.covariance}

    @classmethod
    def from_dict(cls, d: dict) -> "Fit":
        law = get_law(d.get("law"))
        missing = [n for n in law.names if n not in d.get("params", {})]
        if missing:
            raise UserError(f"the fit lacks parameters {missing} of the {law.name} law; refit it with "
                            f"minigpt predict fit")
        return cls(d["law"], {n: float(d["params"][n]) for n in law.names}, dict(d.get("stderr", {})),
                   float(d.get("rmse", math.nan)), float(d.get("max_error", math.nan)), int(d.get("n_points", 0)),
                   int(d.get("restarts", 0)), list(d.get("runs", [])), d.get("procedure", "bounded"),
                   dict(d.get("relative_stderr", {})), list(d.get("at_bound", [])), list(d.get("unidentified", [])),
                   d.get("covariance"))


def load_fit(path) -> tuple[Fit, dict]:
    """A fit written by `minigpt predict fit`, and its whole record (runs, overrides, ...)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no fit at '{path}'; make one with: python minigpt predict fit RUN_DIR ...") from None
    except ValueError as e:
        raise UserError(f"'{path}' is not a fit (not JSON: {e})") from None
    if not isinstance(record, dict) or "law" not in record:
        raise UserError(f"'{path}' is not a fit written by minigpt predict fit (no 'law' key)")
    try:
        fitted = Fit.from_dict(record)
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # a hand-edited or damaged file
        raise UserError(f"'{path}' is not a fit written by minigpt predict fit (its params, stderr or runs "
                        f"do not read: {type(e).__name__}); refit it") from None
    overrides = record.get("overrides", [])
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise UserError(f"'{path}': 'overrides' must be a list of train.py key=value overrides, got {overrides!r}; "
                        "refit it")
    return fitted, record


def fit_points(curve: Curve, start: int | None = None) -> np.ndarray:
    """The indices of a curve's points that a fit uses: after the warmup (where the laws apply) and
    after at least one update (the LR area must be positive)."""
    first = warmup_length(curve.lrs) if start is None else start
    ok = (curve.steps >= max(first, 1)) & (curve.steps <= len(curve.lrs)) & np.isfinite(curve.losses)
    return np.flatnonzero(ok & (curve.losses > 0))


class _Problem:
    """The points a fit uses and the law's residuals on them (log predicted minus log observed)."""

    def __init__(self, law: Law, curves: list[Curve], start: int | None):
        self.law = law
        self.curves = curves
        self.picked = [fit_points(c, start) for c in curves]
        self.sequences = [LRSequence(c.lrs) for c in curves]
        self.steps = [c.steps[i] for c, i in zip(curves, self.picked)]
        self.n_points = sum(len(i) for i in self.picked)
        if self.n_points < 2 * len(law.params):
            raise UserError(f"too few points to fit the {law.name} law: {self.n_points} losses after the warmup, "
                            f"need at least {2 * len(law.params)}; evaluate more often (trainer.eval_interval) "
                            f"or fit the smoothed train loss (--target train)")
        self.observed = np.concatenate([c.losses[i] for c, i in zip(curves, self.picked)])
        self.log_observed = np.log(self.observed)

    def predicted(self, values: dict) -> np.ndarray:
        return np.concatenate([self.law(values, seq, s) for seq, s in zip(self.sequences, self.steps)])

    def residuals(self, x) -> np.ndarray:
        pred = self.predicted(self.law.values(x))
        # A negative prediction has no log: a large residual steers the search away from it.
        return np.where(pred > 0, np.log(np.maximum(pred, 1e-300)), -50.0) - self.log_observed


def fit(law_name: str, curves: list[Curve], *, procedure: str = DEFAULT_PROCEDURE, restarts: int = 12, seed: int = 0,
        start: int | None = None) -> Fit:
    """Fit a law to measured curves: Huber loss (delta 1e-3) on log-loss residuals, reached by
    `procedure`: "published" (the multi-power paper's: a regression start, then a short AdamW
    refinement, L0 unbounded) or "bounded" (bounded least squares from `restarts` random starts).
    The fit reports each parameter's standard error, those at a bound and those the runs cannot
    identify."""
    law = get_law(law_name)
    if procedure not in PROCEDURES:
        raise UserError(f"unknown fitting procedure '{procedure}'; valid: {', '.join(PROCEDURES)}")
    problem = _Problem(law, curves, start)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        if procedure == "published":
            x, fixed = _fit_published(problem), np.zeros(len(law.params), dtype=bool)
            restarts = 0
        else:
            x, fixed = _fit_bounded(problem, restarts, seed)
        values = law.values(x)
        cov, null = _covariance(problem, x, fixed)
    errors = problem.predicted(values) - problem.observed
    se_coordinate = np.sqrt(np.where(np.diag(cov) >= 0, np.diag(cov), np.nan))
    stderr, relative = {}, {}
    for p, e, is_fixed in zip(law.params, se_coordinate, fixed):
        v = values[p.name]
        if is_fixed:
            stderr[p.name] = relative[p.name] = math.nan
            continue
        # delta method: d value / d coordinate
        scale = {"log": abs(v), "log1m": abs(1.0 - v)}.get(p.coordinate, 1.0)
        stderr[p.name] = float(e * scale)
        if p.coordinate == "log":
            relative[p.name] = float(e)
        else:
            reference = float(problem.observed.min()) if p.name == "L0" else abs(v)
            relative[p.name] = float(stderr[p.name] / reference) if reference > 0 else math.inf
    at_bound = [p.name for p, f in zip(law.params, fixed) if f]
    unidentified = [p.name for p, in_null in zip(law.params, null) if p.name not in at_bound
                    and (in_null or not relative[p.name] <= UNIDENTIFIED_ABOVE)]
    runs = []
    for c, i in zip(curves, problem.picked):
        low, high = lr_range(c.lrs)
        runs.append({"label": c.label, "steps": int(len(c.lrs)), "points": int(len(i)), "lr_min": low, "lr_max": high})
    return Fit(law.name, values, stderr, float(np.sqrt(np.mean(errors**2))), float(np.max(np.abs(errors))),
               problem.n_points, restarts, runs, procedure, relative, at_bound, unidentified,
               [[float(v) for v in row] for row in cov])


def _fit_bounded(problem: _Problem, restarts: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bounded trust-region least squares (scipy, Huber loss) from `restarts` starting points drawn
    at random inside the bounds; the best is kept. Returns it and which parameters sit at a bound."""
    from scipy.optimize import least_squares

    law = problem.law
    low = np.array([p.low for p in law.params])
    high = np.array([p.high for p in law.params])
    high[0] = min(high[0], float(problem.observed.max()))  # L0 (the decay can take the loss below it)
    rng = np.random.default_rng(seed)
    best = None
    for i in range(restarts):
        x0 = low + (high - low) * rng.uniform(0.05, 0.95, size=len(low))
        if i == 0:  # one plausible start: no irreducible loss, the power law does it all
            x0[0] = 0.5 * high[0]
        try:
            res = least_squares(problem.residuals, x0, bounds=(low, high), loss="huber", f_scale=HUBER_DELTA,
                                x_scale="jac", max_nfev=400 * len(low))
        except ValueError:
            continue
        if not np.isfinite(res.cost):
            continue
        if best is None or res.cost < best.cost:
            best = res
    if best is None:
        raise UserError(f"the {law.name} law could not be fitted to these curves (every start failed)")
    width = high - low
    fixed = (best.active_mask != 0) | (best.x - low <= AT_BOUND_WITHIN * width) | (high - best.x <= AT_BOUND_WITHIN * width)
    return best.x, fixed


def _covariance(problem: _Problem, x: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Gauss-Newton covariance of the parameters in their coordinates, from the Jacobian of the
    log residuals at the optimum (central differences), and which parameters lie in its null
    directions. A parameter held at a bound gets 0. A direction the runs cannot pin down (a
    near-singular Jacobian: a constant-LR run says nothing about the decay term) gets a huge
    variance, not an infinite one: a tiny ridge keeps the matrix invertible."""
    n = len(x)
    base = problem.residuals(x)
    jac = np.zeros((len(base), n))
    for i in range(n):
        h = 1e-5 * max(1.0, abs(x[i]))
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        jac[:, i] = (problem.residuals(up) - problem.residuals(down)) / (2 * h)
    dof = max(len(base) - n, 1)
    s2 = float(np.sum(base**2)) / dof
    cov = np.zeros((n, n))
    free = ~fixed & np.all(np.isfinite(jac), axis=0)
    if free.any():
        j = jac[:, free]
        jtj = j.T @ j
        jtj += np.eye(len(jtj)) * 1e-12 * max(float(np.trace(jtj)), 1e-300)
        cov[np.ix_(free, free)] = np.linalg.pinv(jtj) * s2
    cov[~fixed & ~free, ~fixed & ~free] = np.inf
    return cov, _null_directions(jac, fixed)


NULL_BELOW = 1e-6  # a singular value of the column-scaled Jacobian this far below the largest is a null direction
NULL_WEIGHT = 0.1  # a parameter with this much of its weight in null directions is not identified


def _null_directions(jac: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """The parameters in a (near-)null direction of the Jacobian: moving them together leaves every
    fitted point where it is, whatever the noise (a perfect fit has standard errors near 0 even
    for those, so the covariance alone does not show them: a constant-LR run and the decay term)."""
    out = np.zeros(jac.shape[1], dtype=bool)
    free = np.flatnonzero(~fixed)
    if len(free) == 0:
        return out
    j = jac[:, free]
    norms = np.linalg.norm(j, axis=0)
    dead = ~(norms > 0) | ~np.isfinite(norms)
    out[free[dead]] = True
    live = free[~dead]
    if len(live) > 1:
        _, sv, vt = np.linalg.svd(jac[:, live] / norms[~dead], full_matrices=False)
        null = vt[sv < NULL_BELOW * sv[0]]
        out[live] = np.sum(null**2, axis=0) > NULL_WEIGHT
    return out


# --- the published procedure ---

# The published code's settings (Luo et al. 2025, thu-yao-01-luo/MultiPowerLaw, as described in
# the paper and its code): AdamW at 5e-2 for the scales (L0, A, B, C) and 5e-3 for the exponents
# (alpha, beta, gamma; the momentum law's lam), at most 200 steps, stopped after 20 without a
# lower loss; the best point seen is kept.
ADAMW_LRS = {"scale": 5e-2, "exponent": 5e-3}
ADAMW_MAX_STEPS = 200
ADAMW_PATIENCE = 20
EXPONENTS = ("alpha", "beta", "gamma", "lam")


def _fit_published(problem: _Problem) -> np.ndarray:
    """The multi-power paper's fitting procedure, written here for both laws: a grid of starts for
    L0 (around the lowest loss), A and alpha (around a linear regression of log loss on log LR
    area) and the decay coefficient, each refined by L-BFGS-B on a simplified law whose decay
    term is the coefficient times the LR's drop from the peak; then the decay term's shape at the
    paper's start (C = 1, beta = gamma = 0.5; the momentum law: the best lam of 0.9, 0.99, 0.999)
    and a short AdamW refinement of every parameter in its own units, L0 unbounded. Returns the
    parameters' coordinates (Param.coordinate)."""
    return _refine(problem, _regression_start(problem))


def _regression_start(problem: _Problem) -> dict:
    from scipy.optimize import minimize
    from scipy.special import huber

    law = problem.law
    areas = [seq.area[s] for seq, s in zip(problem.sequences, problem.steps)]
    area = np.concatenate(areas)
    below_peak = np.concatenate([seq.lrs.max() - seq.lrs[np.minimum(s, len(seq) - 1)]
                                 for seq, s in zip(problem.sequences, problem.steps)])
    peak = max(float(seq.lrs.max()) for seq in problem.sequences)
    lowest = float(problem.observed.min())
    slope, intercept = np.polyfit(np.log(area), np.log(problem.observed - lowest + 0.01), 1)

    log_area, log_observed = np.log(area), np.log(problem.observed)

    def simplified(p):  # the summed Huber loss and its gradient
        L0, A, alpha, K = p
        power = area ** (-alpha)
        pred = np.maximum(L0 + A * power - K * below_peak, 1e-12)
        r = np.log(pred) - log_observed
        dr = np.clip(r, -HUBER_DELTA, HUBER_DELTA) / pred  # d huber / d pred
        grad = [np.sum(dr), np.sum(dr * power), -np.sum(dr * A * power * log_area), -np.sum(dr * below_peak)]
        return float(np.sum(huber(HUBER_DELTA, r))), np.array(grad)

    best = None
    for L0 in np.linspace(lowest - 0.2, lowest + 0.2, 5):
        for A in np.exp(intercept) + np.array([-0.1, 0.0, 0.1]):
            for alpha in -slope + np.array([-0.1, 0.0, 0.1]):
                for K in np.array([0.03, 0.165, 0.3]) / peak:  # the code's 100..1000 at its peak LR 3e-4
                    res = minimize(simplified, [L0, A, alpha, K], jac=True, method="L-BFGS-B", bounds=[(0, None)] * 4)
                    if best is None or res.fun < best.fun:
                        best = res
    L0, A, alpha, K = (float(v) for v in best.x)
    start = None
    for shape in law.shape_starts:
        coefficient = K * (1.0 - shape["lam"]) if "lam" in shape else K  # the momentum sum saturates at drop / (1 - lam)
        values = {"L0": L0, "A": A, "alpha": alpha, **shape, law.coefficient: coefficient}
        error = float(np.sum(huber(HUBER_DELTA, problem.residuals(law.coordinates(values)))))
        if start is None or error < start[0]:
            start = (error, values)
    return start[1]


def _torch_terms(law: Law, seq: LRSequence, steps: np.ndarray):
    """What the law's torch form needs on one curve: the LR area at the points and, per point and LR
    change before it, the drop and the area since (multi-power) or the updates since (momentum)."""
    import torch

    t = torch.as_tensor
    if law.name == "multi_power":
        before = seq.changes[None, :] < steps[:, None]
        since = np.maximum(seq.area[steps][:, None] - seq.area_at_change[None, :], 0.0)
        return (t(seq.area[steps]), t(np.where(before, seq.drop, 0.0)), t(since), t(seq.log_lr_at_change))
    changes = np.flatnonzero(seq.drops)
    updates_since = steps[:, None] - changes[None, :]
    return (t(seq.area[steps]), t(np.where(updates_since > 0, seq.drops[changes], 0.0)),
            t(np.maximum(updates_since, 0).astype(np.float64)))


def _torch_loss(law: Law, v: dict, terms):
    import torch

    area = terms[0]
    power = v["L0"] + v["A"] * area ** (-v["alpha"])
    if law.name == "multi_power":
        _, drop, since, log_lr = terms
        x = v["C"] * torch.exp(-v["gamma"] * log_lr) * since
        return power - v["B"] * torch.sum(drop * (1.0 - torch.exp(-v["beta"] * torch.log1p(x))), dim=1)
    _, drop, updates = terms
    lam = v["lam"]
    return power - v["C"] * torch.sum(drop * (1.0 - torch.exp(updates * torch.log(lam))), dim=1) / (1.0 - lam)


def _adamw_step(p, grad: float, moments: list, lr: float, step: int, betas=(0.9, 0.999), eps=1e-8,
                weight_decay=0.01) -> None:
    """One AdamW update of a scalar parameter in place, with torch.optim.AdamW's defaults and
    arithmetic (decoupled weight decay, bias-corrected moments). Written out because constructing a
    torch optimizer imports torch._dynamo, seconds at the first fit of a process."""
    moments[0] = betas[0] * moments[0] + (1 - betas[0]) * grad
    moments[1] = betas[1] * moments[1] + (1 - betas[1]) * grad * grad
    p.mul_(1 - lr * weight_decay)
    m_hat = moments[0] / (1 - betas[0] ** step)
    v_hat = moments[1] / (1 - betas[1] ** step)
    p.sub_(lr * m_hat / (math.sqrt(v_hat) + eps))


def _refine(problem: _Problem, start: dict) -> np.ndarray:
    """AdamW (torch's defaults otherwise, as the published code) on the summed Huber loss of the log
    residuals, each parameter in its own units; lam is kept inside (0, 1) (the momentum sum has no
    meaning beyond)."""
    import torch

    law = problem.law
    terms = [_torch_terms(law, seq, s) for seq, s in zip(problem.sequences, problem.steps)]
    log_observed = torch.as_tensor(problem.log_observed)
    params = {n: torch.tensor(float(start[n]), dtype=torch.float64, requires_grad=True) for n in law.names}
    lrs = {n: ADAMW_LRS["exponent" if n in EXPONENTS else "scale"] for n in law.names}
    moments = {n: [0.0, 0.0] for n in law.names}
    best_loss, best, stalled = math.inf, dict(start), 0
    for step in range(1, ADAMW_MAX_STEPS + 1):
        for p in params.values():
            p.grad = None
        pred = torch.cat([_torch_loss(law, params, t) for t in terms])
        r = torch.log(pred.clamp(min=1e-12)) - log_observed
        loss = torch.sum(torch.where(r.abs() < HUBER_DELTA, 0.5 * r**2, HUBER_DELTA * (r.abs() - 0.5 * HUBER_DELTA)))
        if not torch.isfinite(loss):
            break
        if loss.item() < best_loss:
            best_loss, best, stalled = loss.item(), {n: p.item() for n, p in params.items()}, 0
        else:
            stalled += 1
            if stalled >= ADAMW_PATIENCE:
                break
        loss.backward()
        with torch.no_grad():
            for n, p in params.items():
                _adamw_step(p, float(p.grad), moments[n], lrs[n], step)
            for n in ("A", "B", "C"):  # positive scales (the law's powers need them; the code's start is positive)
                if n in params:
                    params[n].clamp_(min=1e-12)
            if "lam" in params:
                params["lam"].clamp_(1e-6, 1.0 - 1e-9)
    return law.coordinates(best)
