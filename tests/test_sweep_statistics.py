"""minigpt/studies/sweep/statistics.py: the clipped loss and the LR sensitivity, by hand; the warmup
study's signatures seed by seed (lasting gap, rescue) and its early window, compared at equal
steps and at equal LR exposure."""

import math

import pytest

from helpers import study_jobs, warmup_job
from minigpt.studies.sweep.statistics import build_study, clipped_loss, early_window, lr_sensitivity, seed_pairs, signatures


def test_clipped_loss_is_min_of_final_and_initial_and_initial_when_diverged():
    assert clipped_loss(3.0, 6.0) == 3.0
    assert clipped_loss(7.5, 6.0) == 6.0  # worse than never training: counts as the initial loss
    assert clipped_loss(None, 6.0) == 6.0  # diverged: no final loss
    assert clipped_loss(math.inf, 6.0) == 6.0 and clipped_loss(math.nan, 6.0) == 6.0


def test_lr_sensitivity_hand_computed():
    # Arm A trains at two LRs and diverges at the third (counted as its initial loss, 6.0).
    arm_a = {1e-3: 3.0, 1e-2: 2.5, 1e-1: 6.0}
    arm_b = {1e-3: 2.8, 1e-2: 2.6, 1e-1: 2.4}
    # mean(3.0, 2.5, 6.0) = 11.5 / 3 = 3.8333...; own best 2.5; best of both arms 2.4
    assert lr_sensitivity(arm_a) == pytest.approx(11.5 / 3 - 2.5)
    assert lr_sensitivity(arm_a, best=2.4) == pytest.approx(11.5 / 3 - 2.4)
    assert lr_sensitivity(arm_b) == pytest.approx(2.6 - 2.4)
    assert lr_sensitivity({1e-2: 4.0}) == 0.0
    with pytest.raises(ValueError):
        lr_sensitivity({})


# --- the warmup study's signatures, seed by seed (helpers.study_jobs) -------------------------------


def test_lasting_gap_and_rescue_hold_only_where_every_seed_shows_them():
    study = build_study(study_jobs())
    gap, rescue = signatures(study)
    # pre-LN 0.001 has one seed with a 0.15 gap: not every seed; post-LN 0.01 with 50 steps fails on
    # seed 2 (6.3 > 5.2, so warmup does not train well there), and no warmup ended at 6.45 >= 6.4 (failed)
    assert gap.holds == [("pre-LN", 0.01, 10, 3), ("post-LN", 0.001, 50, 3)]
    assert rescue.holds == [("post-LN", 0.001, 50, 3)]
    pairs = seed_pairs(study, "pre-LN", 0.01, 10)
    assert [p.seed for p in pairs] == ["1", "2", "3"]
    assert [round(p.gap, 3) for p in pairs] == [0.5, 0.5, 0.3]
    assert seed_pairs(study, "post-LN", 0.001, 50)[0].gap is None  # stuck: no final loss


def test_early_window_compares_same_steps_and_same_lr_exposure():
    # A 10-step linear warmup to 0.01 sums 0.055 of LR; without warmup that sum is reached after 6 steps.
    ramp = [0.01 * (i + 1) / 10 for i in range(10)] + [0.01] * 10
    warm = warmup_job("pre", 0.01, 10, 1, 4.5, lrs=ramp, losses=[8.0 - 0.1 * i for i in range(20)])
    bare = warmup_job("pre", 0.01, 0, 1, 5.0, lrs=[0.01] * 20, losses=[8.0 - 0.2 * i for i in range(20)])
    (pair,) = seed_pairs(build_study([warm, bare, warmup_job("pre", 0.1, 0, 1, 5.0), warmup_job("pre", 0.1, 10, 1, 5.0)]),
                         "pre-LN", 0.01, 10)
    e = early_window(pair)
    assert e["steps"] == 10 and e["matched_step"] == 6
    assert e["warmup_loss"] == pytest.approx(8.0 - 0.1 * 4.5)  # mean over steps 0..9
    assert e["no_warmup_same_steps"] == pytest.approx(8.0 - 0.2 * 4.5)
    assert e["no_warmup_same_exposure"] == pytest.approx(8.0 - 0.2 * 2.5)  # mean over steps 0..5
