"""The loss laws (minigpt/studies/loss_law.py): hand-computed values, fits that recover known parameters,
long schedules, and the warnings of a fit. The table schedule the optimizer writes: test_lr_table.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minigpt.studies import loss_law
from minigpt.errors import UserError

PEAK, T, W = 5e-3, 600, 60


# minigpt.studies.lr_table registers "table" when imported: each test here leaves the registry as it was
pytestmark = pytest.mark.usefixtures("table_schedule_stays_here")


def schedule(kind: str, total: int = T, warmup: int = W) -> np.ndarray:
    """LRs like minigpt's default schedules (skip_start linear warmup, floor 0.1)."""
    s = np.arange(total)
    ramp = (s + 1) / warmup
    if kind == "constant":
        after = np.ones(total)
    elif kind == "cosine":
        q = np.clip((s - (warmup - 1)) / (total - warmup), 0, 1)
        after = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * q))
    elif kind == "wsd":  # 20% 1-sqrt cooldown
        start = int(0.8 * total)
        q = np.clip((s - start) / (total - 1 - start), 0, 1)
        after = np.where(s < start, 1.0, 0.1 + 0.9 * (1 - np.sqrt(q)))
    elif kind == "step":
        after = np.where(s < total // 2, 1.0, np.where(s < 3 * total // 4, 0.3, 0.1))
    return PEAK * np.where(s < warmup - 1, ramp, after)


def test_multi_power_loss_reduction_matches_a_hand_computed_five_step_schedule():
    # One warmup update (0.5), the peak (1.0), then 1.0, 0.5, 0.25. The warmup's rise and the
    # peak update add nothing; the drops of 0.5 (update 3) and 0.25 (update 4) do.
    lrs = [0.5, 1.0, 1.0, 0.5, 0.25]
    B, C, beta, gamma = 2.0, 2.0, 0.5, 1.0
    # After 5 updates: S_3 = 0.5 + 0.25 = 0.75, x_3 = 0.5^-1 * 0.75 = 1.5, G = 1 - (2*1.5 + 1)^-0.5 = 0.5
    #                  S_4 = 0.25, x_4 = 0.25^-1 * 0.25 = 1, G = 1 - 3^-0.5 = 0.42265
    # LD(5) = 2 * (0.5 * 0.5 + 0.25 * 0.42265) = 0.71132
    # After 4 updates only the first drop counts: S_3 = 0.5, x = 1, LD(4) = 2 * 0.5 * 0.42265 = 0.42265
    ld = loss_law.loss_reduction(lrs, [1, 2, 3, 4, 5], B, C, beta, gamma)
    assert ld == pytest.approx([0.0, 0.0, 0.0, 2 * 0.5 * (1 - 3**-0.5), 2 * (0.5 * 0.5 + 0.25 * (1 - 3**-0.5))], abs=1e-12)
    assert ld[-1] == pytest.approx(0.71132, abs=1e-5)
    # The whole law: L0 + A (S_W + S1)^-alpha - LD, with S_W + S1 = 3.25 after 5 updates
    full = loss_law.multi_power_loss(lrs, [5], 3.0, 2.0, 0.5, B, C, beta, gamma)
    assert full[0] == pytest.approx(3.0 + 2.0 * 3.25**-0.5 - 0.71132, abs=1e-5)


def test_momentum_annealing_area_matches_a_hand_computed_five_step_schedule():
    # Drops after the peak: 0 (update 2), 0.5 (update 3), 0.25 (update 4); lambda = 0.5:
    # m = 0, 0.5, 0.5 * 0.5 + 0.25 = 0.5 -> S2 after 4 updates 0.5, after 5 updates 1.0
    s2 = loss_law.annealing_area([0.5, 1.0, 1.0, 0.5, 0.25], 0.5)
    assert s2 == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.5, 1.0])


def test_the_warmup_is_the_updates_before_the_first_peak():
    assert loss_law.warmup_length(schedule("cosine")) == W - 1
    assert loss_law.warmup_length([1.0, 1.0, 0.5]) == 0
    # A constant schedule has no change, so no loss reduction at all.
    assert not loss_law.loss_reduction(schedule("constant"), [T], 100.0, 1.0, 0.5, 0.5).any()


TRUE = {
    "multi_power": {"L0": 3.0, "A": 1.6, "alpha": 0.5, "B": 70.0, "C": 0.5, "beta": 0.6, "gamma": 0.5},
    "momentum": {"L0": 3.0, "A": 1.6, "alpha": 0.5, "C": 40.0, "lam": 0.95},
}


@pytest.fixture(scope="module")
def law_fits():
    """Fits of noisy curves (constant, cosine, WSD) drawn from each law, made once per (law, procedure)."""
    made = {}

    def get(law, procedure="bounded"):
        if (law, procedure) not in made:
            made[law, procedure] = loss_law.fit(law, law_curves(law), procedure=procedure, restarts=6)
        return made[law, procedure]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("law", ["multi_power", "momentum"])
def test_fitting_noisy_curves_of_a_law_recovers_its_parameters(law, law_fits):
    fit = law_fits(law)
    assert fit.rmse < 4e-3  # the noise is about 2e-3 nats
    for name, true in TRUE[law].items():
        got, err = fit.params[name], fit.stderr[name]
        # Each parameter within 3 of its standard errors and, for the well-determined ones, close.
        assert math.isfinite(err) and abs(got - true) <= 3 * err + 1e-9, (name, got, err)
    for name in ("L0", "A", "alpha"):
        assert fit.params[name] == pytest.approx(TRUE[law][name], rel=0.02)
    # An unseen schedule is predicted within a few noise levels.
    unseen = schedule("step")
    assert fit.predict(unseen, [T])[0] == pytest.approx(loss_law.LAWS[law](TRUE[law], unseen, [T])[0], abs=0.01)


def test_too_few_points_and_unknown_laws_are_one_line_errors():
    lrs = schedule("cosine")
    with pytest.raises(UserError, match="too few points to fit the multi_power law: 3 losses"):
        loss_law.fit("multi_power", [loss_law.Curve(lrs, [100, 300, 600], [5.0, 4.5, 4.2])])
    with pytest.raises(UserError, match="unknown law 'power'; valid: multi_power, momentum"):
        loss_law.get_law("power")


def test_a_hundred_thousand_step_schedule_predicts_with_and_without_its_band():
    """(Its speed is scripts/bench_predict.py's, not a test's.)"""
    fit = loss_law.Fit("multi_power", dict(TRUE["multi_power"]), {}, 0.0, 0.0, 0, 0)
    lrs = schedule("cosine", total=100_000, warmup=1000)
    steps = np.unique(np.linspace(1, 100_000, 200).astype(int))
    predicted = fit.predict(lrs, steps)
    assert np.isfinite(predicted).all()
    # With its band (what predict draws), in one pass over the changes: the same prediction.
    fit.covariance = (np.eye(7) * 1e-4).tolist()
    with_band, band = fit.predict_with_band(lrs, steps)
    assert np.array_equal(with_band, predicted) and np.isfinite(band).all()
    # Merging neighbouring LR changes beyond MAX_CHANGES moves the prediction by a hair.
    exact = loss_law.loss_reduction(lrs[:20_000], [20_000], 70.0, 0.5, 0.6, 0.5)
    grouped = loss_law.LRSequence(lrs[:20_000])
    assert grouped.grouped
    assert loss_law.loss_reduction(grouped, [20_000], 70.0, 0.5, 0.6, 0.5) == pytest.approx(exact, abs=1e-4)


def test_exact_below_the_merge_threshold(monkeypatch):
    lrs = schedule("cosine", total=3000, warmup=100)
    monkeypatch.setattr(loss_law, "MAX_CHANGES", 10**6)
    exact = loss_law.loss_reduction(lrs, [3000], 70.0, 0.5, 0.6, 0.5)[0]
    monkeypatch.setattr(loss_law, "MAX_CHANGES", 256)
    merged = loss_law.loss_reduction(lrs, [3000], 70.0, 0.5, 0.6, 0.5)[0]
    # A direct sum over the changes, written out: the reference for both.
    k = np.arange(100, 3000)
    drops = lrs[k - 1] - lrs[k]
    tail = np.cumsum(lrs[::-1])[::-1]  # sum of lrs[k:]
    direct = 70.0 * np.sum(drops * (1 - (0.5 * lrs[k] ** -0.5 * tail[k] + 1) ** -0.6))
    assert exact == pytest.approx(direct, rel=1e-12)
    assert merged == pytest.approx(direct, abs=2e-3)


def law_curves(law: str, kinds=("constant", "cosine", "wsd"), noise=5e-4, every=20):
    rng = np.random.default_rng(0)
    curves = []
    for kind in kinds:
        lrs = schedule(kind)
        steps = np.arange(0, T + 1, every)
        clean = loss_law.LAWS[law](TRUE[law], lrs, np.maximum(steps, 1))
        curves.append(loss_law.Curve(lrs, steps, clean * (1 + noise * rng.standard_normal(len(steps))), kind))
    return curves


@pytest.fixture(scope="module")
def multi_power_fits(law_fits):
    """The multi-power law fitted both ways on a constant, a cosine and a WSD curve it generated."""
    return {p: law_fits("multi_power", p) for p in loss_law.PROCEDURES}


def truth_at_end(kind: str) -> float:
    return loss_law.LAWS["multi_power"](TRUE["multi_power"], schedule(kind), [T])[0]


@pytest.mark.slow
def test_the_published_procedure_recovers_the_power_law_and_keeps_the_decay_shape_near_its_start(multi_power_fits):
    fit = multi_power_fits["published"]
    assert fit.procedure == "published" and fit.restarts == 0 and fit.at_bound == []  # no bounds to hit
    for name in ("L0", "A", "alpha"):
        assert fit.params[name] == pytest.approx(TRUE["multi_power"][name], rel=0.02), name
    # AdamW moves an exponent at most about 5e-3 per step for 200 steps: beta and gamma stay
    # within 1 of the paper's start (0.5), C = 1 within 0.05 * 200 = 10.
    assert abs(fit.params["beta"] - 0.5) <= 1.0 and abs(fit.params["gamma"] - 0.5) <= 1.0
    assert abs(fit.params["C"] - 1.0) <= 10.0
    # ... and it lands no worse than its regression start (the best point seen is kept).
    problem = loss_law._Problem(loss_law.LAWS["multi_power"], law_curves("multi_power"), None)
    start = loss_law._regression_start(problem)
    x_start, x_end = loss_law.LAWS["multi_power"].coordinates(start), loss_law.LAWS["multi_power"].coordinates(fit.params)
    from scipy.special import huber

    def cost(x):
        return np.sum(huber(loss_law.HUBER_DELTA, problem.residuals(x)))

    assert cost(x_end) <= cost(x_start)
    for kind in ("step", "cosine"):  # unseen (step) and fitted (cosine) ends, within a few hundredths
        assert fit.predict(schedule(kind), [T])[0] == pytest.approx(truth_at_end(kind), abs=0.05)


@pytest.mark.slow
def test_the_default_procedure_predicts_law_curves_at_least_as_well_as_the_other(multi_power_fits):
    # The evidence behind DEFAULT_PROCEDURE on curves the law itself drew (docs/loss_prediction.md):
    # the error on an unseen schedule's end, summed over two unseen schedules.
    def error(fit):
        return sum(abs(fit.predict(schedule(k), [T])[0] - truth_at_end(k)) for k in ("step", "constant"))

    other = next(p for p in loss_law.PROCEDURES if p != loss_law.DEFAULT_PROCEDURE)
    assert error(multi_power_fits[loss_law.DEFAULT_PROCEDURE]) <= error(multi_power_fits[other])


@pytest.mark.slow
def test_the_prediction_band_of_a_well_identified_fit_covers_the_truth(law_fits):
    fit = law_fits("momentum")
    assert fit.unidentified == [] and fit.at_bound == []
    for kind in ("step", "constant"):  # unseen, and fitted
        # three standard errors: a 95% band (z = 1.96) misses one point in twenty by design
        predicted, band = fit.predict_with_band(schedule(kind), [300, T], z=3.0)
        assert np.array_equal(predicted, fit.predict(schedule(kind), [300, T]))
        assert fit.band(schedule(kind), [300, T]) == pytest.approx(band * 1.96 / 3.0)
        truth = loss_law.LAWS["momentum"](TRUE["momentum"], schedule(kind), [300, T])
        assert np.all(np.abs(predicted - truth) <= band), (kind, predicted - truth, band)
        assert np.all(band < 0.02)
    # No covariance (an old fit): no band.
    assert loss_law.Fit("multi_power", dict(TRUE["multi_power"]), {}, 0, 0, 0, 0).band(schedule("step")) is None


def test_the_multi_power_derivatives_match_finite_differences():
    law, values = loss_law.LAWS["multi_power"], TRUE["multi_power"]
    lrs, steps = schedule("wsd"), np.array([100, 500, 600])
    grads = loss_law.multi_power_gradient(lrs, steps, values)
    x = law.coordinates(values)
    for i, p in enumerate(law.params):
        up, down = x.copy(), x.copy()
        up[i] += 1e-6
        down[i] -= 1e-6
        numeric = (law(law.values(up), lrs, steps) - law(law.values(down), lrs, steps)) / 2e-6
        assert grads[i] == pytest.approx(numeric, abs=1e-7), p.name


@pytest.mark.slow
def test_a_fit_flags_parameters_at_a_bound_and_those_the_runs_cannot_identify():
    # One constant-LR curve: no LR ever drops, so no point depends on the decay term.
    constant = law_curves("multi_power", ("constant",))
    published = loss_law.fit("multi_power", constant, procedure="published")
    assert {"B", "C", "beta", "gamma"} <= set(published.unidentified)
    assert published.warning().startswith("fit: the runs cannot identify B, C, beta, gamma")
    assert "\n" not in published.warning()
    # A pure power law (no irreducible loss, no decay benefit): the bounded fit pins L0 to its
    # lower bound 0 and the momentum law's C to its lower bound.
    steps = np.arange(0, T + 1, 20)
    pure = [loss_law.Curve(lrs, steps, 1.6 * np.cumsum(np.r_[0.0, lrs])[steps].clip(1e-9) ** -0.3, kind)
            for kind, lrs in (("constant", schedule("constant")), ("cosine", schedule("cosine")))]
    bounded = loss_law.fit("momentum", pure, procedure="bounded", restarts=2)
    assert {"L0", "C"} <= set(bounded.at_bound)
    assert math.isnan(bounded.stderr["L0"]) and "at a bound" in bounded.warning()
    record = bounded.to_dict()
    assert record["at_bound"] == bounded.at_bound and record["procedure"] == "bounded"
    assert loss_law.Fit.from_dict(record).at_bound == bounded.at_bound


def test_a_schedule_outside_the_fitted_lr_range_is_flagged_in_one_line():
    fit = loss_law.Fit("multi_power", dict(TRUE["multi_power"]), {}, 0, 0, 0, 0,
                       runs=[{"label": "cosine", "lr_min": 0.1 * PEAK, "lr_max": PEAK}])
    assert fit.range_warning(schedule("cosine"), "cosine") is None
    assert fit.range_warning(schedule("wsd"), "wsd") is None  # down to 0.1x too
    to_zero = schedule("cosine") * np.r_[np.ones(T - 100), np.linspace(1, 0, 100)]
    line = fit.range_warning(to_zero, "to zero")
    assert line.startswith("to zero: outside the LR range of the fitted runs (goes down to 0x")
    assert "below the fitted runs' lowest 0.1x" in line and "\n" not in line
    assert "peaks at" in fit.range_warning(2 * schedule("cosine"), "hot")


def test_a_schedule_much_longer_than_the_fitted_runs_is_flagged():
    fit = loss_law.Fit("multi_power", dict(TRUE["multi_power"]), {}, 0, 0, 0, 0,
                       runs=[{"label": "cosine", "steps": T // 4, "lr_min": 0.1 * PEAK, "lr_max": PEAK}])
    assert fit.range_warning(schedule("cosine")[: 3 * T // 4], "3x") is None  # up to 3x: the paper's reach
    line = fit.range_warning(schedule("cosine"), "4x")
    assert line.startswith("4x: outside what the fitted runs covered (runs ") and f"{T // 4:,}" in line
    assert "4x the longest fitted run" in line and "\n" not in line
    old = loss_law.Fit("multi_power", dict(TRUE["multi_power"]), {}, 0, 0, 0, 0, runs=[{"label": "c", "steps": T // 4}])
    assert "4x the longest" in old.range_warning(schedule("cosine"), "4x")  # a fit without LR ranges still says it


def test_unknown_procedures_are_one_line_errors():
    with pytest.raises(UserError, match="unknown fitting procedure 'lbfgs'; valid: published, bounded"):
        loss_law.fit("momentum", law_curves("momentum"), procedure="lbfgs")
