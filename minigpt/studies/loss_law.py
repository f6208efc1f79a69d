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
    low: float  # bounds, in the fitted (possibly log) space
    high: float
    log: bool = False  # fitted as its natural log: the scale is unknown by orders of magnitude

    def to_value(self, x: float) -> float:
        return math.exp(x) if self.log else x

    def to_fitted(self, v: float) -> float:
        return math.log(v) if self.log else v


@dataclass(frozen=True)
class Law:
    name: str
    params: tuple[Param, ...]
    function: object  # fn(lrs, steps, *values) -> losses
    paper: str

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def __call__(self, values: dict, lrs, steps) -> np.ndarray:
        return self.function(lrs, steps, *(values[n] for n in self.names))


# Bounds wide enough for LRs from 1e-5 to 1e-1 and losses of a few nats; L0's upper bound is
# set per fit to the lowest observed loss.
LAWS = {
    "multi_power": Law(
        "multi_power",
        (Param("L0", 0.0, 20.0), Param("A", -12.0, 12.0, log=True), Param("alpha", 0.01, 3.0),
         Param("B", -12.0, 16.0, log=True), Param("C", -12.0, 16.0, log=True), Param("beta", 0.01, 5.0),
         Param("gamma", 0.0, 1.5)),
        multi_power_loss,
        "Luo et al., A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules, ICLR 2025",
    ),
    "momentum": Law(
        "momentum",
        (Param("L0", 0.0, 20.0), Param("A", -12.0, 12.0, log=True), Param("alpha", 0.01, 3.0),
         Param("C", -12.0, 16.0, log=True), Param("lam", 0.5, 0.9999)),
        momentum_loss,
        "Tissue et al., Scaling Law with Learning Rate Annealing, arXiv 2408.11029",
    ),
}


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


@dataclass
class Fit:
    law: str
    params: dict[str, float]
    stderr: dict[str, float]  # one standard error of each parameter (nan where not identifiable)
    rmse: float  # of the fitted curves against the observed points, in nats
    max_error: float
    n_points: int
    restarts: int
    runs: list[dict] = field(default_factory=list)  # what was fitted (labels, steps, ...)

    def predict(self, lrs, steps=None) -> np.ndarray:
        """The predicted loss after each of `steps` updates (default: every step 1..T)."""
        lrs = as_sequence(lrs)
        if steps is None:
            steps = np.arange(1, len(lrs) + 1)
        return get_law(self.law)(self.params, lrs, steps)

    def to_dict(self) -> dict:
        return {"law": self.law, "params": self.params, "stderr": self.stderr, "rmse": self.rmse,
                "max_error": self.max_error, "n_points": self.n_points, "restarts": self.restarts, "runs": self.runs}

    @classmethod
    def from_dict(cls, d: dict) -> "Fit":
        law = get_law(d.get("law"))
        missing = [n for n in law.names if n not in d.get("params", {})]
        if missing:
            raise UserError(f"the fit lacks parameters {missing} of the {law.name} law; refit it with "
                            "minigpt predict fit")
        return cls(d["law"], {n: float(d["params"][n]) for n in law.names}, dict(d.get("stderr", {})),
                   float(d.get("rmse", math.nan)), float(d.get("max_error", math.nan)), int(d.get("n_points", 0)),
                   int(d.get("restarts", 0)), list(d.get("runs", [])))


def load_fit(path) -> tuple[Fit, dict]:
    """A fit written by `minigpt predict fit`, and its whole record (runs, overrides, ...)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no fit at '{path}'; make one with: minigpt predict fit RUN_DIR ...") from None
    except ValueError as e:
        raise UserError(f"'{path}' is not a fit (not JSON: {e})") from None
    if not isinstance(record, dict) or "law" not in record:
        raise UserError(f"'{path}' is not a fit written by minigpt predict fit (no 'law' key)")
    return Fit.from_dict(record), record


def fit_points(curve: Curve, start: int | None = None) -> np.ndarray:
    """The indices of a curve's points that a fit uses: after the warmup (where the laws apply) and
    after at least one update (the LR area must be positive)."""
    first = warmup_length(curve.lrs) if start is None else start
    ok = (curve.steps >= max(first, 1)) & (curve.steps <= len(curve.lrs)) & np.isfinite(curve.losses)
    return np.flatnonzero(ok & (curve.losses > 0))


def fit(law_name: str, curves: list[Curve], *, restarts: int = 12, seed: int = 0, start: int | None = None) -> Fit:
    """Fit a law to measured curves: Huber loss on log-loss residuals (delta 1e-3), bounded
    parameters, the best of `restarts` starting points drawn at random inside the bounds."""
    from scipy.optimize import least_squares

    law = get_law(law_name)
    picked = [(c, fit_points(c, start)) for c in curves]
    sequences = [LRSequence(c.lrs) for c in curves]
    n_points = sum(len(i) for _, i in picked)
    if n_points < 2 * len(law.params):
        raise UserError(f"too few points to fit the {law.name} law: {n_points} losses after the warmup, "
                        f"need at least {2 * len(law.params)}; evaluate more often (trainer.eval_interval) "
                        f"or fit the smoothed train loss (--target train)")
    observed = np.concatenate([c.losses[i] for c, i in picked])
    log_observed = np.log(observed)
    low = np.array([p.low for p in law.params])
    high = np.array([p.high for p in law.params])
    high[0] = min(high[0], float(observed.max()))  # L0 (the decay can take the loss below it)

    def values_of(x) -> dict:
        return {p.name: p.to_value(v) for p, v in zip(law.params, x)}

    def predicted(x) -> np.ndarray:
        v = values_of(x)
        return np.concatenate([law(v, seq, c.steps[i]) for seq, (c, i) in zip(sequences, picked)])

    def residuals(x) -> np.ndarray:
        pred = predicted(x)
        # A negative prediction has no log: a large residual steers the search away from it.
        return np.where(pred > 0, np.log(np.maximum(pred, 1e-300)), -50.0) - log_observed

    rng = np.random.default_rng(seed)
    best = None
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for i in range(restarts):
            x0 = low + (high - low) * rng.uniform(0.05, 0.95, size=len(low))
            if i == 0:  # one plausible start: no irreducible loss, the power law does it all
                x0[0] = 0.5 * high[0]
            try:
                res = least_squares(residuals, x0, bounds=(low, high), loss="huber", f_scale=HUBER_DELTA,
                                    x_scale="jac", max_nfev=400 * len(low))
            except ValueError:
                continue
            if not np.isfinite(res.cost):
                continue
            if best is None or res.cost < best.cost:
                best = res
    if best is None:
        raise UserError(f"the {law.name} law could not be fitted to these curves (every start failed)")
    values = values_of(best.x)
    pred = predicted(best.x)
    errors = pred - observed
    stderr = _standard_errors(law, best, n_points, values)
    runs = [{"label": c.label, "steps": int(len(c.lrs)), "points": int(len(i))} for c, i in picked]
    return Fit(law.name, values, stderr, float(np.sqrt(np.mean(errors**2))), float(np.max(np.abs(errors))),
               n_points, restarts, runs)


def _standard_errors(law: Law, res, n_points: int, values: dict) -> dict[str, float]:
    """Gauss-Newton standard errors from the Jacobian at the optimum (delta method for the
    log-fitted parameters). A parameter the runs cannot pin down gets a huge error (a tiny ridge
    keeps the matrix invertible: a constant-LR run says nothing about the decay term's B, C,
    beta, gamma); one at a bound of the fit gets nan."""
    dof = max(n_points - len(law.params), 1)
    s2 = float(np.sum(res.fun**2)) / dof
    free = res.active_mask == 0
    se = np.full(len(law.params), np.nan)
    if free.any():
        j = res.jac[:, free]
        jtj = j.T @ j
        jtj += np.eye(len(jtj)) * 1e-12 * max(float(np.trace(jtj)), 1e-300)
        se[free] = np.sqrt(np.clip(np.diag(np.linalg.pinv(jtj)) * s2, 0.0, None))
    out = {}
    for p, e in zip(law.params, se):
        e = float(e) * (values[p.name] if p.log else 1.0)
        out[p.name] = e if math.isfinite(e) else math.nan
    return out
