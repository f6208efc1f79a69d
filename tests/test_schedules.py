"""The scheduler registry: behaviour, errors, lengths, configs, user-registered schedules.

Parity with torch / transformers / DeepSpeed / timm / nanoGPT is in test_schedules_parity.py.
"""

import dataclasses
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import composed_scheduler
from minigpt import schedules
from minigpt.errors import UserError
from minigpt.schedules import (
    Schedule,
    build_schedule,
    check_curve,
    list_schedules,
    schedule_from_config,
    to_steps,
)

ROOT = Path(__file__).resolve().parents[1]

ALL = [
    "constant", "constant_warmup", "cosine_restarts", "cosine_warmup", "cyclic", "exponential",
    "inverse_sqrt", "linear_warmup", "lr_range_test", "multistep", "one_cycle", "polynomial", "step", "wsd",
]
HF = {"warmup_convention": "skip_end", "decay_convention": "skip_end"}


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.fixture
def registry():
    """Let a test register schedules without leaking them into the others."""
    with schedules.registry_scope():
        yield


def test_list_schedules_is_sorted_and_complete():
    assert list_schedules() == sorted(ALL)


# --------------------------------------------------------------------------------------------
# Table-driven values. Each row: (name, total_steps, params, {step: expected multiplier}).
# The expected values are worked out by hand from the formulas in docs/schedules.md.
# --------------------------------------------------------------------------------------------

C45 = 0.5 + math.sqrt(2) / 4  # (1 + cos(pi/4)) / 2

TABLE = [
    ("constant", 5, {}, {0: 1.0, 4: 1.0, 2.5: 1.0}),
    # Project default: step 0 already at 1/W, peak at W-1, floor at the last step.
    ("cosine_warmup", 12, {"warmup": 4, "min_lr_ratio": 0.2},
     {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 5: 0.2 + 0.8 * C45, 7: 0.6, 11: 0.2}),
    # HF / torch: LR 0 at step 0, peak at W, floor one step past the run.
    ("cosine_warmup", 12, {"warmup": 4, "min_lr_ratio": 0.2, **HF},
     {0: 0.0, 2: 0.5, 4: 1.0, 6: 0.2 + 0.8 * C45, 8: 0.6, 11: 0.2 + 0.8 * (1 + math.cos(7 * math.pi / 8)) / 2}),
    # nanoGPT: (t+1)/(W+1) up to the peak at W, cosine from W to the floor at T-1.
    ("cosine_warmup", 13, {"warmup": 4, "min_lr_ratio": 0.0, "warmup_convention": "skip_both",
                           "decay_convention": "keep_both"}, {0: 0.2, 3: 0.8, 4: 1.0, 8: 0.5, 12: 0.0}),
    # No warmup: the run starts at its peak whatever the convention.
    ("cosine_warmup", 9, {"warmup": 0, "min_lr_ratio": 0.0}, {0: 1.0, 4: 0.5, 8: 0.0}),
    ("cosine_warmup", 9, {"warmup": 0, "min_lr_ratio": 0.0, **HF}, {0: 1.0, 3: 0.5 + 0.5 * math.cos(math.pi / 3)}),
    # Warmup as long as the run: the last step is the peak.
    ("cosine_warmup", 4, {"warmup": 4}, {0: 0.25, 3: 1.0}),
    ("linear_warmup", 10, {"warmup": 2, "min_lr_ratio": 0.0}, {0: 0.5, 1: 1.0, 5: 0.5, 9: 0.0}),
    ("linear_warmup", 10, {"warmup": 2, "min_lr_ratio": 0.5, **HF}, {0: 0.0, 1: 0.5, 2: 1.0, 6: 0.75, 9: 0.5 + 0.5 / 8}),
    ("constant_warmup", 8, {"warmup": 4}, {0: 0.25, 3: 1.0, 7: 1.0}),
    ("constant_warmup", 8, {"warmup": 4, "warmup_shape": "cosine"}, {0: 0.5 * (1 - math.cos(math.pi / 4)), 1: 0.5}),
    ("constant_warmup", 8, {"warmup": 4, "warmup_shape": "1-sqrt"}, {0: 1 - math.sqrt(0.75), 3: 1.0}),
    ("constant_warmup", 8, {"warmup": 4, "warmup_shape": "log"}, {0: math.log(2) / math.log(5), 3: 1.0}),
    ("constant_warmup", 8, {"warmup": 4, "warmup_shape": "exponential", "warmup_start_ratio": 0.01},
     {0: 0.01**0.75, 1: 0.1, 3: 1.0}),
    # DeepSpeed WarmupLR log warmup: log(t+1)/log(W), so 0 at step 0 and the peak at W-1.
    ("constant_warmup", 20, {"warmup": 10, "warmup_shape": "log", "warmup_convention": "keep_both"},
     {0: 0.0, 1: math.log10(2), 9: 1.0, 10: 1.0}),
    ("constant_warmup", 8, {"warmup": 4, "warmup_start_ratio": 0.2, "warmup_convention": "skip_end"},
     {0: 0.2, 2: 0.6, 4: 1.0}),
    ("constant_warmup", 8, {"warmup": 4, "warmup_convention": "skip_both"}, {0: 0.2, 3: 0.8, 4: 1.0}),
    ("polynomial", 10, {"warmup": 0, "power": 2.0, "min_lr_ratio": 0.0}, {0: 1.0, 3: 4 / 9, 9: 0.0}),
    ("polynomial", 10, {"warmup": 0, "power": 2.0, "min_lr_ratio": 0.1}, {3: 0.5, 9: 0.1}),
    ("polynomial", 10, {"warmup": 0, "power": 0.5, "min_lr_ratio": 0.0, **HF}, {5: math.sqrt(0.5)}),
    # Vaswani et al.: (t+1)/W, then sqrt(W/(t+1)).
    ("inverse_sqrt", 40, {"warmup": 4}, {0: 0.25, 3: 1.0, 15: 0.5, 35: 1 / 3}),
    # HF: t/W, then sqrt(tau/(t - W + tau)).
    ("inverse_sqrt", 40, {"warmup": 4, **HF}, {0: 0.0, 4: 1.0, 16: 0.5}),
    ("inverse_sqrt", 40, {"warmup": 0, "timescale": 10}, {0: 1.0, 30: 0.5}),
    ("step", 10, {"warmup": 0, "step_size": 3, "gamma": 0.5}, {0: 1.0, 2: 1.0, 2.999: 1.0, 3: 0.5, 5: 0.5, 6: 0.25}),
    # With a warmup, the peak (at W-1 by default) is held step_size steps.
    ("step", 10, {"warmup": 2, "step_size": 3, "gamma": 0.5}, {0: 0.5, 1: 1.0, 3: 1.0, 4: 0.5, 7: 0.25}),
    ("step", 10, {"warmup": 2, "step_size": 3, "gamma": 0.5, **HF}, {1: 0.5, 2: 1.0, 4: 1.0, 5: 0.5}),
    ("multistep", 10, {"warmup": 0, "milestones": (3, 5), "gamma": 0.1}, {2: 1.0, 3: 0.1, 4.5: 0.1, 5: 0.01, 9: 0.01}),
    ("multistep", 10, {"warmup": 2, "milestones": (3,), "gamma": 0.1}, {0: 0.5, 1: 1.0, 2: 1.0, 3: 0.1}),
    ("exponential", 10, {"warmup": 0, "gamma": 0.5, "step_size": 2}, {0: 1.0, 1: math.sqrt(0.5), 4: 0.25}),
    ("exponential", 10, {"warmup": 2, "gamma": 0.5, "step_size": 1}, {1: 1.0, 3: 0.25}),
    # SGDR, torch layout: restart right after the floor.
    ("cosine_restarts", 16, {"warmup": 0, "cycles": None, "period": 4, "min_lr_ratio": 0.0, **HF},
     {0: 1.0, 2: 0.5, 4: 1.0, 6: 0.5, 8: 1.0}),
    ("cosine_restarts", 16, {"warmup": 0, "cycles": None, "period": 4, "period_mult": 2.0, "min_lr_ratio": 0.0, **HF},
     {3: 0.5 + 0.5 * math.cos(3 * math.pi / 4), 4: 1.0, 8: 0.5, 12: 1.0}),
    ("cosine_restarts", 16, {"warmup": 0, "cycles": None, "period": 4, "cycle_decay": 0.5, "min_lr_ratio": 0.0, **HF},
     {4: 0.5, 6: 0.25, 8: 0.25}),
    # Project default within each cycle: the floor on the cycle's last step.
    ("cosine_restarts", 10, {"warmup": 2, "cycles": 2, "min_lr_ratio": 0.0},
     {0: 0.5, 1: 1.0, 3: 0.5, 5: 0.0, 6: C45, 9: 0.0}),
    ("one_cycle", 10, {"warmup": 3, "anneal": "linear", "div_factor": 10.0, "final_div_factor": 10.0},
     {0: 0.1, 1: 0.55, 2: 1.0, 5.5: 0.505, 9: 0.01}),
    ("one_cycle", 10, {"warmup": 3, "anneal": "linear", "div_factor": 10.0, "final_div_factor": 10.0,
                       "three_phase": True}, {2: 1.0, 3: 0.55, 4: 0.1, 9: 0.01}),
    ("one_cycle", 10, {"warmup": 3, "div_factor": 10.0, "final_div_factor": 10.0}, {0: 0.1, 1: 0.55, 2: 1.0}),
    ("cyclic", 12, {"base_lr_ratio": 0.2, "step_size_up": 2}, {0: 0.2, 1: 0.6, 2: 1.0, 3: 0.6, 4: 0.2, 6: 1.0}),
    ("cyclic", 12, {"base_lr_ratio": 0.2, "step_size_up": 2, "mode": "triangular2"}, {2: 1.0, 6: 0.6, 10: 0.4}),
    ("cyclic", 12, {"base_lr_ratio": 0.2, "step_size_up": 2, "mode": "exp_range", "gamma": 0.5}, {2: 0.4}),
    ("cyclic", 12, {"base_lr_ratio": 0.0, "step_size_up": 1, "step_size_down": 3}, {1: 1.0, 2: 2 / 3, 4: 0.0}),
    ("lr_range_test", 5, {"start_lr_ratio": 1e-4}, {0: 1e-4, 2: 1e-2, 4: 1.0}),
    ("lr_range_test", 5, {"start_lr_ratio": 0.2, "shape": "linear"}, {0: 0.2, 2: 0.6, 4: 1.0}),
    ("lr_range_test", 1, {}, {0: 1.0}),
    ("wsd", 10, {"warmup": 2, "decay": 4, "decay_shape": "linear", "min_lr_ratio": 0.0},
     {0: 0.5, 1: 1.0, 5: 1.0, 7: 0.5, 9: 0.0}),
    ("wsd", 10, {"warmup": 2, "decay": 4, "decay_start": 4, "decay_shape": "linear", "min_lr_ratio": 0.0},
     {3: 1.0, 6: 0.5, 9: 0.0}),
    ("wsd", 10, {"warmup": 2, "decay": 4, "decay_shape": "1-sqrt", "min_lr_ratio": 0.0}, {6: 0.5, 9: 0.0}),
    ("wsd", 10, {"warmup": 2, "decay": 4, "decay_shape": "exponential", "min_lr_ratio": 0.01}, {7: 0.1, 9: 0.01}),
    ("wsd", 10, {"warmup": 2, "decay": 4, "decay_shape": "cosine", "min_lr_ratio": 0.0, **HF}, {6: 1.0, 8: 0.5}),
    ("wsd", 10, {"warmup": 2, "decay": 0}, {9: 1.0}),
]


@pytest.mark.parametrize("name,total,params,expected", TABLE, ids=[f"{r[0]}-{i}" for i, r in enumerate(TABLE)])
def test_values(name, total, params, expected):
    s = build_schedule(name, total, **params)
    for step, want in expected.items():
        assert close(s(step), want), f"{name} {params} at step {step}: {s(step)!r} != {want!r}"


def test_one_cycle_beta1_moves_opposite_to_the_lr():
    s = build_schedule("one_cycle", 10, warmup=3, anneal="linear", base_momentum=0.8, max_momentum=0.9)
    assert [round(s.beta1(t), 12) for t in (0, 1, 2, 9)] == [0.9, 0.85, 0.8, 0.9]
    s3 = build_schedule("one_cycle", 10, warmup=3, anneal="linear", three_phase=True, base_momentum=0.8)
    assert close(s3.beta1(4), 0.95) and close(s3.beta1(9), 0.95)
    assert build_schedule("one_cycle", 10, cycle_momentum=False).beta1(3) is None


@pytest.mark.parametrize("name", sorted(set(ALL) - {"one_cycle"}))
def test_only_one_cycle_has_beta1(name):
    assert build_schedule(name, 100).beta1(10) is None


# --------------------------------------------------------------------------------------------
# Conventions, over every schedule
# --------------------------------------------------------------------------------------------

RAMPS = {"cosine_warmup": "cosine", "linear_warmup": "linear", "polynomial": None, "wsd": None}


@pytest.mark.parametrize("total,warmup", [(1, 0), (1, 1), (2, 1), (7, 3), (53, 7), (53, 53), (1000, 50)])
@pytest.mark.parametrize("name", sorted(RAMPS))
def test_default_convention_no_lr_zero_peak_at_w_minus_1_floor_at_last_step(name, total, warmup):
    extra = {"decay": total - warmup} if name == "wsd" else {}  # the whole run after the warmup
    s = build_schedule(name, total, warmup=warmup, min_lr_ratio=0.25, **extra)
    values = [s(t) for t in range(total)]
    assert min(values) > 0  # no update is spent at LR 0
    assert values.index(max(values)) == max(warmup - 1, 0) and close(max(values), 1.0)
    if warmup < total - 1:
        assert close(values[-1], 0.25) and all(v > 0.25 + 1e-12 for v in values[max(warmup - 1, 0) : -1])


@pytest.mark.parametrize("name", sorted(RAMPS))
def test_hf_convention_floor_is_one_step_past_the_run(name):
    s = build_schedule(name, 20, warmup=4, min_lr_ratio=0.25, **HF)
    assert s(0) == 0.0 and close(s(4), 1.0) and s(19) > 0.25 and close(s(20), 0.25)


CONTINUOUS = ["constant", "constant_warmup", "cosine_warmup", "linear_warmup", "polynomial", "inverse_sqrt",
              "exponential", "wsd", "one_cycle", "lr_range_test"]


@pytest.mark.parametrize("name", CONTINUOUS)
def test_fractional_steps_are_continuous(name):
    # Runs counted in tokens evaluate at fractional steps: no jumps between integer steps.
    s = build_schedule(name, 53)
    for t in range(1, 53):
        assert abs(s(t) - s(t - 1e-9)) < 1e-6, f"{name} jumps at step {t}"
        lo, hi = sorted((s(t - 1), s(t)))
        assert lo - 1e-12 <= s(t - 0.5) <= hi + 1e-12


def test_step_decays_use_floor_for_fractional_steps():
    s = build_schedule("step", 100, warmup=0, step_size=10, gamma=0.5)
    assert s(9.999) == 1.0 and s(10.0) == 0.5 and s(19.5) == 0.5


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("total", [1000, 53])
def test_defaults_build_and_pass_check_curve(name, total):
    s = build_schedule(name, total)
    check_curve(s)
    d = s.describe()
    if name == "one_cycle" and total == 53:  # torch's peak at step 0.3 * 53 - 1 = 14.9 lies between two steps
        assert 0.9999 < d["peak"] < 1.0 and d["peak_step"] == 15
    else:
        assert close(d["peak"], 1.0) and d["final"] >= 0


def test_cosine_restarts_with_one_cycle_is_cosine_warmup():
    for conv in schedules.CONVENTIONS:
        for warmup in (0, 5):
            a = build_schedule("cosine_restarts", 30, warmup=warmup, cycles=1, decay_convention=conv)
            b = build_schedule("cosine_warmup", 30, warmup=warmup, decay_convention=conv)
            assert all(close(a(t), b(t)) for t in range(30)), (conv, warmup)


# --------------------------------------------------------------------------------------------
# Schedule object: immutable, pure, describe, summary_line
# --------------------------------------------------------------------------------------------


def test_schedule_is_immutable_and_pure():
    s = build_schedule("cosine_warmup", 100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.total_steps = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.params.warmup = 5
    forward = [s(t) for t in range(100)]
    assert [s(t) for t in reversed(range(100))] == forward[::-1]  # no hidden state
    assert build_schedule("cosine_warmup", 100) == s  # equal when built from the same inputs


def test_describe_and_summary_line():
    s = build_schedule("cosine_warmup", 1000, warmup=50, min_lr_ratio=0.1)
    d = s.describe()
    assert d["peak_step"] == 49 and d["peak"] == 1.0
    assert d["floor_step"] == 999 and close(d["floor"], 0.1) and close(d["final"], 0.1)
    assert d["phases"] == {"warmup": 0, "decay": 50} and close(d["start"], 0.02)
    assert s.summary_line(3e-3) == (
        "cosine_warmup (1000 steps): warmup 0..49, decay 50..999; "
        "start 6e-05, peak 0.003 at step 49, floor 0.0003 at step 999"
    )
    w = build_schedule("wsd", 100, warmup=10, decay=20).describe()
    assert w["phases"] == {"warmup": 0, "stable": 10, "decay": 80}
    assert "final" in build_schedule("cyclic", 100).summary_line(1.0)  # the floor is not the end
    # No floor where nothing comes below the peak after it (issue 27: not "floor 1 at step 99").
    assert build_schedule("lr_range_test", 100).summary_line(1e-2) == \
        "lr_range_test (100 steps): start 1e-06, peak 0.01 at step 99 (the last step: it only rises)"
    assert build_schedule("constant_warmup", 100, warmup=10).summary_line(1.0).endswith(
        "start 0.1, peak 1 at step 9, held there to the end")


def test_step_must_be_a_non_negative_number():
    s = build_schedule("constant", 10)
    with pytest.raises(ValueError):
        s(-1)
    with pytest.raises(ValueError):
        s(math.nan)


# --------------------------------------------------------------------------------------------
# Errors: one line, naming what is wrong and what is accepted
# --------------------------------------------------------------------------------------------


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_name_lists_valid_names_and_closest_match():
    message = error(build_schedule, "cosine_warmpu", 100)
    assert "'cosine_warmpu'" in message and "closest match: 'cosine_warmup'" in message
    for name in ALL:
        assert name in message
    assert "closest match: 'wsd'" in error(schedule_from_config, {"name": "wds"}, 100, None)


def test_unknown_parameter_names_it_the_schedule_and_the_accepted_ones():
    message = error(build_schedule, "cosine_warmup", 100, warmpu=5)
    assert "'warmpu'" in message and "'cosine_warmup'" in message and "did you mean 'warmup'" in message
    assert "accepted parameters: warmup, warmup_shape, warmup_convention" in message and "min_lr_ratio" in message
    assert "accepted parameters: none" in error(build_schedule, "constant", 100, warmup=5)
    assert "'foo'" in error(schedule_from_config, {"name": "wsd", "foo": 1}, 100, None)


@pytest.mark.parametrize(
    "name,params,expected",
    [
        ("cosine_warmup", {"min_lr_ratio": 1.5}, "min_lr_ratio=1.5 is out of range; accepted: 0.0 <= min_lr_ratio <= 1.0"),
        ("cosine_warmup", {"min_lr_ratio": -0.1}, "accepted: 0.0 <= min_lr_ratio <= 1.0"),
        ("cosine_warmup", {"min_lr_ratio": math.nan}, "min_lr_ratio=nan is out of range"),
        ("cosine_warmup", {"warmup_start_ratio": -1.0}, "accepted: 0.0 <= warmup_start_ratio <= 1.0"),
        ("cosine_warmup", {"warmup": 200}, "warmup=200 is out of range; accepted: 0 <= warmup <= 100 (total_steps)"),
        ("cosine_warmup", {"warmup_shape": "cosin"}, "warmup_shape='cosin' is not accepted (did you mean 'cosine'?)"),
        ("cosine_warmup", {"decay_convention": "hf"}, "accepted: skip_start, skip_end, keep_both, skip_both"),
        ("constant_warmup", {"warmup_shape": "exponential"}, "0 < warmup_start_ratio <= 1"),
        ("polynomial", {"power": 0.0}, "power=0.0 is out of range; accepted: 0.0 < power"),
        ("step", {"gamma": 0.0}, "gamma=0.0 is out of range; accepted: 0.0 < gamma <= 1.0"),
        ("step", {"gamma": 1.5}, "accepted: 0.0 < gamma <= 1.0"),
        ("step", {"step_size": 0}, "step_size=0 is out of range; accepted: 1 <= step_size"),
        ("exponential", {"gamma": 2.0}, "0.0 < gamma <= 1.0"),
        ("multistep", {"milestones": (60, 50)}, "must be strictly increasing"),
        ("multistep", {"milestones": (50, 120)}, "milestones[1]=120 is out of range; accepted: 20 (warmup) <= milestone <= 99"),
        ("wsd", {"warmup": 50, "decay": 60}, "decay=60 is out of range; accepted: 0 <= decay <= 50 (total_steps - warmup)"),
        ("wsd", {"warmup": 10, "decay_start": 150},
         "decay_start=150 is out of range; accepted: 10 (warmup) <= decay_start <= 100 (total_steps)"),
        ("wsd", {"warmup": 10, "decay_start": 5}, "decay_start=5 is out of range"),
        ("wsd", {"decay_shape": "exponential", "min_lr_ratio": 0.0}, "0 < min_lr_ratio <= 1"),
        ("inverse_sqrt", {"warmup": 0}, "timescale"),
        ("cosine_restarts", {"cycles": 2, "period": 10}, "set exactly one of cycles"),
        ("cosine_restarts", {"cycles": None}, "set exactly one of cycles"),
        ("cosine_restarts", {"period_mult": 0.5}, "accepted: 1.0 <= period_mult"),
        ("cosine_restarts", {"cycle_decay": 0.0}, "accepted: 0.0 < cycle_decay <= 1.0"),
        ("one_cycle", {"warmup": 0}, "warmup=0 is out of range; accepted: 1 <= warmup <= 100 (total_steps)"),
        ("one_cycle", {"warmup": 60, "three_phase": True}, "warmup=60 is out of range"),
        ("one_cycle", {"base_momentum": 0.99},
         "base_momentum=0.99 is out of range; accepted: 0.0 <= base_momentum <= 0.95 (max_momentum)"),
        ("one_cycle", {"div_factor": 0.5}, "accepted: 1.0 <= div_factor"),
        ("one_cycle", {"anneal": "cos"}, "anneal='cos' is not accepted"),
        ("cyclic", {"mode": "triangle"}, "did you mean 'triangular'"),
        ("cyclic", {"step_size_up": 0}, "accepted: 1 <= step_size_up"),
        ("lr_range_test", {"start_lr_ratio": 0.0}, "0.0 < start_lr_ratio <= 1.0"),
        ("cosine_warmup", {"min_lr_ratio": True}, "min_lr_ratio: expected a number, got True"),
        ("cosine_warmup", {"min_lr_ratio": "lots"}, "min_lr_ratio: expected a number, got 'lots'"),
        ("cosine_warmup", {"warmup_shape": None}, "warmup_shape: must be set (str), got null"),
        ("one_cycle", {"three_phase": "yes"}, "three_phase: expected true or false, got 'yes'"),
        ("cosine_restarts", {"cycles": 2.5, "period": None}, "cycles: expected an integer, got 2.5"),
        ("multistep", {"milestones": 50}, "milestones: expected a list, got 50"),
    ],
)
def test_out_of_range_values_name_the_parameter_and_the_range(name, params, expected):
    message = error(build_schedule, name, 100, **params)
    assert message.startswith(f"scheduler '{name}': ")
    assert expected in message


def test_bad_total_steps():
    assert "total_steps=0 is out of range" in error(build_schedule, "constant", 0)
    assert "total_steps" in error(schedule_from_config, {"name": "constant"}, 1.5, None)
    assert "tokens_per_step=0" in error(schedule_from_config, {"name": "constant"}, 10, 0)


def test_check_curve_catches_a_peak_past_the_end():
    # HF's convention puts the peak at step W: with W == T it is never reached.
    s = build_schedule("cosine_warmup", 10, warmup=10, warmup_convention="skip_end")
    assert "never reaches its peak" in error(check_curve, s)
    check_curve(build_schedule("cosine_warmup", 10, warmup=10))  # the default reaches it at step 9
    assert "never reaches its peak" in error(check_curve, build_schedule("cyclic", 10, step_size_up=20))


def test_check_curve_catches_nan_and_negative(registry):
    @dataclasses.dataclass(frozen=True)
    class P:
        bad_at: int = 3
        value: float = math.nan

    @schedules.register_schedule("test_bad", P)
    def bad(step, total, p):
        return p.value if step == p.bad_at else 1.0

    assert "at step 3 is nan" in error(check_curve, build_schedule("test_bad", 10))
    assert "at step 3 is -1.0" in error(check_curve, build_schedule("test_bad", 10, value=-1.0))
    check_curve(build_schedule("test_bad", 10, value=0.5))


def test_registering_twice_under_one_name_is_refused(registry):
    with pytest.raises(ValueError):
        schedules.register_schedule("constant", schedules.ConstantParams)(lambda s, t, p: 0.5)
    with pytest.raises(ValueError):
        schedules.register_schedule("Not-Snake", schedules.ConstantParams)
    with pytest.raises(TypeError):
        schedules.register_schedule("no_dataclass", dict)


# --------------------------------------------------------------------------------------------
# Lengths
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,tokens_per_step,steps",
    [
        (300, None, 300),
        (0, None, 0),
        (0.05, None, 50),
        (1.0, None, 1000),
        (0.0005, None, 1),  # 0.5 steps: nearest, halves up
        (0.0004, None, 0),
        ("5%", None, 50),
        ("12.5%", None, 125),
        ("300", None, 300),
        ("300 steps", None, 300),
        ("1 step", None, 1),
        ("1.5k steps", None, 1500),
        ("2_000", None, 2000),
        ("1e3", None, 1000),
        ("2M tokens", 2048, 977),  # 976.56 -> 977
        ("500k tokens", 1000, 500),
        ("1e6 tokens", 4096, 244),  # 244.14 -> 244
        ("6144 tokens", 4096, 2),  # 1.5 -> 2: halves up
        (" 2m Tokens ", 1000, 2000),
    ],
)
def test_to_steps(value, tokens_per_step, steps):
    assert to_steps(value, 1000, tokens_per_step) == steps


@pytest.mark.parametrize(
    "value,expected",
    [
        ("5 parsecs", "accepted: an int (steps, e.g. 300), a float in [0, 1] (fraction of the run, e.g. 0.05)"),
        ("", "'2M tokens'"),
        ("150%", "between 0% and 100%"),
        ("1.5 steps", "steps must be a whole number"),
        (-3, "is negative"),
        ("-5%", "is negative"),
        (2.5, "a float length is a fraction of the run and must be in [0, 1]"),
        (True, "is not a length"),
        ("2M tokens", "tokens per step is unknown"),
        ("inf", "is not a length"),
    ],
)
def test_bad_lengths(value, expected):
    assert expected in error(to_steps, value, 1000, None, "warmup")


def test_schedule_from_config_converts_lengths_once():
    cfg = {"name": "wsd", "warmup": "2M tokens", "decay": "10%", "decay_shape": "linear"}
    s = schedule_from_config(cfg, 10_000, 2048)
    assert s.params.warmup == 977 and s.params.decay == 1000
    m = schedule_from_config({"name": "multistep", "milestones": ["50%", 0.75, 9000, "999k tokens"]}, 10_000, 100)
    assert m.params.milestones == (5000, 7500, 9000, 9990)
    assert build_schedule("cosine_warmup", 1010, warmup=0.05).params.warmup == 51  # 0.05 of 1010 = 50.5 -> 51
    assert build_schedule("cosine_warmup", 1003).params.warmup == 201  # default 0.2 of 1003 = 200.6 -> 201
    assert build_schedule("cosine_warmup", 100, warmup="10%").params.warmup == 10
    assert "scheduler 'wsd': decay='ten'" in error(schedule_from_config, {"name": "wsd", "decay": "ten"}, 100, 10)
    assert "tokens per step is unknown" in error(build_schedule, "wsd", 100, decay="1M tokens")
    assert isinstance(schedule_from_config({"name": "cosine_warmup", "warmup": 0.1}, 55, None).params.warmup, int)


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def test_every_schedule_has_a_config_and_every_config_a_schedule():
    from minigpt.launch.compose import CONF_DIR, group_options

    # The scheduler group is the registry itself (Hydra's ConfigStore), with no file in conf/.
    assert group_options("scheduler", [CONF_DIR]) == sorted([*list_schedules(), "custom"])
    assert not (ROOT / "conf" / "scheduler").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_the_composed_scheduler_holds_every_parameter_at_its_dataclass_default(name):
    cfg = composed_scheduler(name)  # what `scheduler=<name>` composes: the file (only what differs) over the defaults
    fields = dataclasses.fields(schedules.schedule_params(name))
    assert cfg["name"] == name and cfg["conventions"] == "minigpt"
    assert list(cfg) == ["name", "conventions"] + [f.name for f in fields]  # every key settable without '+', in order
    for f in fields:
        # The keys a convention preset fills are left unset (null) in the config, so the preset decides.
        default = None if f.name in schedules.PRESET_KEYS else list(f.default) if isinstance(f.default, tuple) else f.default
        assert cfg[f.name] == default and type(cfg[f.name]) is type(default), f.name


def commented_fields() -> dict[tuple[str, str], bool]:
    """(class, field) of every dataclass field in schedules.py: has it a comment, beside or above?"""
    import ast
    import inspect

    lines = inspect.getsource(schedules).splitlines()
    out = {}
    for node in ast.parse("\n".join(lines)).body:
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign):
                    line, above = lines[stmt.lineno - 1], lines[stmt.lineno - 2].strip()
                    out[(node.name, stmt.target.id)] = "  # " in line or above.startswith("#")
    return out


def test_every_parameter_is_explained_where_its_default_is():
    """The config files no longer list the parameters: their comments in schedules.py are their documentation."""
    commented = commented_fields()
    for name in ALL:
        params = schedules.schedule_params(name)
        for f in dataclasses.fields(params):
            owner = next(c for c in params.__mro__ if f.name in c.__dict__.get("__annotations__", {}))
            assert commented[(owner.__name__, f.name)], f"{owner.__name__}.{f.name}: no comment"


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("total", [1000, 53])
def test_config_defaults_build_and_pass_check_curve(name, total):
    check_curve(schedule_from_config(composed_scheduler(name), total, 4096))


def test_the_fast_walk_of_a_curve_gives_the_values_of_each_call():
    """Schedule.curve (how a run is checked and a loss predicted) is the per-step call, value for value,
    with the one-update lag and lead-in of the DeepSpeed conventions too."""
    deepspeed = ("constant_warmup", "linear_warmup", "cosine_warmup")  # the schedules DeepSpeed has
    for name in ALL:
        for conventions in ("minigpt", "deepspeed") if name in deepspeed else ("minigpt",):
            s = schedules.build_schedule(name, 97, conventions=conventions)
            assert s.curve(range(97)) == [s(t) for t in range(97)], (name, conventions)
    lagged = schedules.build_schedule("cosine_warmup", 97, conventions="deepspeed")
    assert lagged.lag == 1  # the second branch of curve() is exercised


def test_custom_config_needs_name_and_module(tmp_path, monkeypatch, registry):
    cfg = composed_scheduler("custom")
    assert cfg == {"name": None, "conventions": "minigpt", "module": None}
    assert "scheduler.name is not set" in error(schedule_from_config, cfg, 100, None)
    assert "scheduler.module='no_such_module_xyz' cannot be imported" in error(
        schedule_from_config, {**cfg, "name": "x", "module": "no_such_module_xyz"}, 100, None
    )
    (tmp_path / "empty_scheds_xyz.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = error(schedule_from_config, {"name": "mine", "module": "empty_scheds_xyz"}, 100, None)
    assert "unknown scheduler 'mine'" in message and "registers no schedule named 'mine'" in message
    assert "set scheduler.module" in error(schedule_from_config, {"name": "mine", "module": None}, 100, None)


def test_user_schedule_registered_from_its_own_module(tmp_path, monkeypatch, registry):
    (tmp_path / "my_scheds_xyz.py").write_text(
        textwrap.dedent(
            """
            import math
            from dataclasses import dataclass
            from minigpt.schedules import check_range, length_field, register_schedule

            @dataclass(frozen=True)
            class HalvingParams:
                every: int = length_field(0.5)
                foo: float = 1.0

                def validate(self, total_steps):
                    check_range(self, "every", 1)

            @register_schedule("test_halving", HalvingParams)
            def halving(step, total_steps, p):
                return p.foo * 0.5 ** math.floor(step / p.every)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = {"name": "test_halving", "module": "my_scheds_xyz", "every": "10%", "foo": 1}
    s = schedule_from_config(cfg, 100, None)
    assert isinstance(s, Schedule) and s.params.every == 10 and s.params.foo == 1.0
    assert s(9) == 1.0 and s(10) == 0.5 and s(25) == 0.25
    assert "test_halving" in list_schedules()
    check_curve(s)
    assert "'bar'" in error(schedule_from_config, {**cfg, "bar": 2}, 100, None)
    assert "every=0 is out of range" in error(schedule_from_config, {**cfg, "every": 0}, 100, None)


def test_package_imports_neither_hydra_nor_matplotlib():
    code = (
        "import sys, minigpt.schedules, minigpt.plots; "
        "bad = [m for m in ('hydra', 'omegaconf', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_schedule_module_found_in_the_working_directory(tmp_path, monkeypatch, registry):
    """`python <checkout>/train.py scheduler.module=pkg.mod` from a project folder: the folder is
    importable, as for `python -m` (issue 27)."""
    project = tmp_path / "project"
    (project / "proj_pkg_xyz").mkdir(parents=True)
    (project / "proj_pkg_xyz" / "__init__.py").write_text("")
    (project / "proj_pkg_xyz" / "scheds.py").write_text(textwrap.dedent(
        """
        from dataclasses import dataclass
        from minigpt.schedules import register_schedule

        @dataclass(frozen=True)
        class P:
            def validate(self, total_steps):
                pass

        @register_schedule("test_from_cwd", P)
        def f(step, total_steps, p):
            return 0.25
        """))
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(project))])
    monkeypatch.chdir(project)
    s = schedule_from_config({"name": "test_from_cwd", "module": "proj_pkg_xyz.scheds"}, 10, None)
    assert s(3) == 0.25
    assert sys.path[-1] == str(project)  # last: it shadows no installed package


def test_schedule_module_not_found_says_where_it_looked(tmp_path, monkeypatch, registry):
    monkeypatch.chdir(tmp_path)
    message = error(schedule_from_config, {"name": "x", "module": "absent_pkg_xyz.scheds"}, 10, None)
    assert f"looked in the working directory {tmp_path}" in message
    assert "absent_pkg_xyz/" in message and "PYTHONPATH" in message and "pip install -e" in message
    (tmp_path / "broken_mod_xyz.py").write_text("import not_a_module_xyz\n")
    message = error(schedule_from_config, {"name": "x", "module": "broken_mod_xyz"}, 10, None)
    assert "No module named 'not_a_module_xyz'" in message and "raised while importing it" in message
