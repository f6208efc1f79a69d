"""minigpt/config.py: the dataclasses are the one source of defaults (the files in conf/ hold only
what differs from them, and every key is still in the composed config, settable without '+'),
config.coerce's rules for lists, literals and mappings, and the checks of single settings (the LR
scaling rule's reference batch, the weight-decay mode)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from helpers import ROOT, composed
from minigpt import schedules
from minigpt.config import Config, OptimConfig, coerce, config_from_dict
from minigpt.errors import UserError

CONF = ROOT / "conf"
DEFAULTS = Config().to_dict()
GROUPS = ["scheduler", "trainer", "model", "optim", "data", "logger"]  # the groups that define a run's values
FILES = [CONF / "config.yaml"] + sorted(p for g in GROUPS for p in (CONF / g).glob("*.yaml"))


def leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def default_of(path, key: str):
    """The value `key` of this file would get without it: the dataclass default beneath the file."""
    group = path.parent.name
    if group == "scheduler":
        base = schedules.config_defaults(None if path.stem == "custom" else path.stem)
    else:
        base = DEFAULTS[group] if group in GROUPS else DEFAULTS
    for part in key.split("."):
        if not isinstance(base, dict) or part not in base:
            return KeyError
        base = base[part]
    return base


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(CONF).as_posix() for p in FILES])
def test_a_conf_file_repeats_no_default(path):
    values = OmegaConf.to_container(OmegaConf.load(path)) or {}
    values.pop("defaults", None)
    for key, value in leaves(values):
        default = default_of(path, key)
        assert not (value == default and type(value) is type(default)), f"{key}: {value!r} is its default already"


def test_no_file_sets_a_key_the_dataclasses_lack():
    for path in FILES:
        values = OmegaConf.to_container(OmegaConf.load(path)) or {}
        values.pop("defaults", None)
        for key, _ in leaves(values):
            assert default_of(path, key) is not KeyError, f"{path.relative_to(CONF)}: {key}"


CHOICES = {"trainer": "default", "model": "cpu", "optim": "adamw", "data": "stdlib", "logger": "jsonl"}


@pytest.mark.parametrize("overrides", [[], ["data=files", "data.paths=[x]"], ["data=hub", "data.hub_name=a/b"], ["trainer=gpu"],
                                       ["model=gpt2_small", "logger=wandb", "seed=3"]])
def test_the_composed_config_holds_every_key_at_its_file_or_default_value(overrides):
    cfg = composed(*overrides)
    given = dict(o.split("=", 1) for o in overrides)
    choices = {**CHOICES, **{k: v for k, v in given.items() if k in CHOICES}}
    got = dict(leaves({k: v for k, v in cfg.items() if k not in ("scheduler", "hydra")}))
    for group, option in choices.items():
        own = dict(leaves({group: OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml")) or {}}))
        for key, default in leaves({group: DEFAULTS[group]}):
            assert key in got, key  # any key can be set on the command line without '+'
            if key not in own and key not in given:
                assert got[key] == default, key  # not in the file: the dataclass default
    for key, default in leaves({k: v for k, v in DEFAULTS.items() if k not in CHOICES and k != "scheduler"}):
        assert got[key] == (int(given[key]) if key in given else default) or key == "run_name", key
    config_from_dict(OmegaConf.to_container(OmegaConf.create(cfg), resolve=True))


# --- values and single settings -----------------------------------------------------------------


def test_lists_literals_and_mappings():
    from typing import Literal, Optional

    assert coerce("a.txt", list[str], "paths") == ["a.txt"]  # one path where a list is expected
    assert coerce([1, "2"], tuple[int, ...], "milestones") == (1, 2)
    assert coerce(None, dict, "scheduler") == {} and coerce(None, Optional[int], "k") is None
    with pytest.raises(UserError, match=r"^norm: must be one of pre, post; got 'psot' \(did you mean 'post'\?\)$"):
        coerce("psot", Literal["pre", "post"], "norm")
    with pytest.raises(UserError, match=r"^milestones: expected a list, got 50$"):
        coerce(50, tuple[int, ...], "milestones")
    with pytest.raises(UserError, match=r"^k: must be set \(int\), got null$"):
        coerce(None, int, "k")
    # A length of a schedule: the structure by the type, each value by the schedule's own rule.
    assert coerce(["10%", 3], tuple[int, ...], "m", scalar=lambda v, k: (k, v)) == (("m[0]", "10%"), ("m[1]", 3))


def test_scaling_rule_needs_a_reference_batch():
    with pytest.raises(UserError, match="reference_batch_tokens"):
        OptimConfig(lr_scaling="linear").validate()


@pytest.mark.parametrize("overrides, text", [
    ({"weight_decay_mode": "decoupled"}, "optim.weight_decay_mode: must be one of coupled, independent"),
    ({"weight_decay_mode": "independent", "weight_decay": 1.0}, "optim.weight_decay must be < 1 with"),
])
def test_bad_decay_settings_are_one_line(overrides, text):
    with pytest.raises(UserError, match=text.replace(".", r"\.")):
        config_from_dict({"optim": overrides})
