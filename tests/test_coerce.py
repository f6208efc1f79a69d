"""One rule set for loose values (config.coerce): the run config and the schedule parameters
accept and refuse the same values, with the same words."""

import pytest

from minigpt.config import config_from_dict
from minigpt.errors import UserError
from minigpt.schedules import build_schedule

REFUSED = object()

# (type, value given, value received or REFUSED)
CASES = [
    (int, "12", 12), (int, 12.0, 12), (int, " 7 ", 7), (int, 3, 3), (int, None, None),
    (int, 12.5, REFUSED), (int, True, REFUSED), (int, "ten", REFUSED), (int, "12.0", REFUSED), (int, "1e3", REFUSED),
    (float, "1e-3", 0.001), (float, "0.25", 0.25), (float, 1, 1.0), (float, 0.5, 0.5),
    (float, True, REFUSED), (float, "lots", REFUSED), (float, [0.5], REFUSED),
    (bool, True, True), (bool, False, False),
    (bool, "true", REFUSED), (bool, "false", REFUSED), (bool, 1, REFUSED), (bool, 0, REFUSED), (bool, "yes", REFUSED),
    (bool, None, REFUSED),
]
# A key of each type in the config (optional where the schedule's is) and in a schedule's parameters.
CONFIG_KEY = {int: ("monitor", "sharpness_every"), float: ("optim", "weight_decay"), bool: ("monitor", "skip_spikes")}
SCHEDULE_KEY = {int: ("cosine_restarts", "cycle_limit"), float: ("cosine_warmup", "min_lr_ratio"),
                bool: ("one_cycle", "three_phase")}


def through_config(kind, value):
    section, key = CONFIG_KEY[kind]
    try:
        return getattr(getattr(config_from_dict({section: {key: value}}), section), key), None
    except UserError as e:
        return REFUSED, str(e)


def through_schedule(kind, value):
    name, key = SCHEDULE_KEY[kind]
    try:
        return getattr(build_schedule(name, 100, **{key: value}).params, key), None
    except UserError as e:
        return REFUSED, str(e)


@pytest.mark.parametrize("kind, value, expected", CASES, ids=[f"{k.__name__}-{v!r}" for k, v, _ in CASES])
def test_the_config_and_the_schedules_take_a_value_alike(kind, value, expected):
    (in_config, config_error), (in_schedule, schedule_error) = through_config(kind, value), through_schedule(kind, value)
    assert in_config == expected and in_schedule == expected
    if expected is REFUSED:  # the same words after the key: "<key>: expected an integer, got 'ten'"
        section, key = CONFIG_KEY[kind]
        name, param = SCHEDULE_KEY[kind]
        assert config_error.startswith(f"{section}.{key}: ") and schedule_error.startswith(f"scheduler '{name}': {param}: ")
        assert config_error.split(": ", 1)[1] == schedule_error.split(": ", 2)[2]
    else:
        assert type(in_config) is type(expected) and type(in_schedule) is type(expected)


