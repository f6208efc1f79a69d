"""minigpt/studies/sweep/statistics.py: the clipped loss and the LR sensitivity, by hand."""

import math

import pytest

from minigpt.studies.sweep.statistics import clipped_loss, lr_sensitivity


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
