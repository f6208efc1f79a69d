"""The one composition of the config: `compose(overrides)` is what train.py runs with those
overrides, typed (minigpt/config.py); `composed(overrides)` is Hydra's untyped result with its
`hydra` node (the launcher, the sweeper, the job's name), for the precheck and what inspects
Hydra's side. train.py's precheck, every tool, script and test compose through here, and a
refused composition is explained in one place (`explain`): one line, a UserError.

Hydra plumbing lives in minigpt/launch/ only: the search path @hydra.main builds from
--config-path/--config-dir (`hydra_search_path`), the dataclass defaults and the schedule registry
handed to Hydra's ConfigStore (`register_defaults`), and a cache of compositions (`composed`).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
import yaml

from minigpt import schedules
from minigpt.config import Config, config_from_dict
from minigpt.errors import UserError


def _conf_dir() -> Path:
    """conf/ of the checkout this package sits in, or the copy a (non-editable) install carries as
    package data (pyproject.toml maps conf/ to minigpt.conf)."""
    here = Path(__file__).resolve()
    checkout = here.parents[2] / "conf"
    return checkout if (checkout / "config.yaml").is_file() else here.parents[1] / "conf"


CONF_DIR = _conf_dir()


def register_defaults() -> None:
    """Hand the dataclass defaults to Hydra, so that the files in conf/ hold only what differs
    and every key can still be set on the command line without '+'. conf/config.yaml lists
    `dataclass_defaults` first (every key but the scheduler's: minigpt/config.py). The `scheduler`
    config group is the schedule registry itself: one option per registered schedule, at its
    defaults (schedules.config_defaults), and `custom` (name, conventions, module) for a schedule
    of one's own; a user's scheduler/<name>.yaml under --config-dir joins them (and may list
    `/scheduler/<name>@_here_` in its defaults to start from a registered one). Plain values, no
    types: config_from_dict checks them."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="dataclass_defaults", node={k: v for k, v in Config().to_dict().items() if k != "scheduler"})
    for name in schedules.list_schedules():
        store.store(group="scheduler", name=name, node=schedules.config_defaults(name))
    store.store(group="scheduler", name="custom", node=schedules.config_defaults(None))


register_defaults()  # on import: train.py, the precheck and every compose of this package come through here


# --- composing ---------------------------------------------------------------------------------


def compose(overrides: list[str], config_dirs: list[Path] | None = None, *, config_name: str = "config") -> Config:
    """The typed config train.py runs with these overrides (`key=value`, `group=option`), from
    `config_dirs` (first match wins; default: conf/). Bad input: a UserError, one line."""
    cfg = composed(overrides, config_dirs, config_name=config_name, with_hydra=False)
    return config_from_dict(OmegaConf.to_container(cfg, resolve=True))


# Values Hydra reads while it composes (more config folders, the environment it records).
COMPOSITION_KEYS = ("hydra.searchpath", "hydra.job.env_copy", "hydra.job.env_set")
# Configs composed from config-group choices alone, for every later composition of this process
# with the same choices: (config name, group overrides, working directory, conf files) -> config.
_GROUP_CHOICES_COMPOSED: dict = {}


def composed(overrides: list[str], config_dirs: list[Path] | None = None, *, config_name: str = "config",
             with_hydra: bool = True) -> DictConfig:
    """What Hydra's compose(config_name, overrides, return_hydra_config=with_hydra) returns over
    `config_dirs` (default: conf/), composing only config-group choices not composed before; a
    refused composition is a UserError (`explain`). Untyped: the precheck and the tests of
    Hydra's side (launchers, sweepers, job names) read it; everything else takes `compose`.

    Hydra composes the defaults list of the group choices (a tenth of a second), then applies each
    plain `key=value` override to the result with OmegaConf.update (next to nothing). So the
    composition of the same choices, with the conf files unchanged, is copied and the values are
    applied to the copy, as Hydra applies them; Hydra's record of the command line
    (hydra.overrides, hydra.job.override_dirname) is written as Hydra writes it. The precheck of a
    100-job grid of values composes once instead of 100 times. Other overrides (+key, ++key, ~key,
    key@package), the values of COMPOSITION_KEYS and a value the update refuses go through Hydra
    in full: errors are its own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    dirs = [Path(d).resolve() for d in (config_dirs or [CONF_DIR])]
    overrides = list(overrides)
    with hydra_search_path(dirs):
        try:
            cfg = _composed(config_name, overrides, dirs, OverridesParser.create())
        except (HydraException, OmegaConfBaseException) as e:
            raise UserError(explain(e, overrides, dirs, config_name)) from None
        except yaml.YAMLError as e:  # e.g. a python tag in a --config-dir file: refused, never constructed
            raise UserError(yaml_error_line(e)) from None
    if not with_hydra:  # as Hydra drops it
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def _composed(config_name: str, overrides: list[str], conf_dirs: list[Path], parser) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra._internal.config_loader_impl import get_overrides_dirname

    def composed_by_hydra(ovr: list[str]) -> DictConfig:
        return hydra_compose(config_name=config_name, overrides=ovr, return_hydra_config=True)

    parsed = parser.parse_overrides(overrides)
    groups, values = [], []
    for o in parsed:
        (groups if _is_config_group(o.key_or_group, conf_dirs) else values).append(o)
    if any(o.package is not None or o.is_add() or o.is_force_add() or o.is_delete()
           or o.key_or_group.startswith(COMPOSITION_KEYS) for o in values):
        return composed_by_hydra(overrides)
    key = (config_name, tuple(o.input_line for o in groups), os.getcwd(), _conf_files_state(conf_dirs))
    if key not in _GROUP_CHOICES_COMPOSED:
        _GROUP_CHOICES_COMPOSED[key] = composed_by_hydra([o.input_line for o in groups])
    cfg = copy.deepcopy(_GROUP_CHOICES_COMPOSED[key])  # flags (struct mode) included
    try:
        for o in values:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
    except Exception:
        return composed_by_hydra(overrides)
    task = [o for o in parsed if not o.is_hydra_override()]
    cfg.hydra.overrides.task = [o.input_line for o in task]
    cfg.hydra.overrides.hydra = [o.input_line for o in parsed if o.is_hydra_override()]
    naming = cfg.hydra.job.config.override_dirname
    cfg.hydra.job.override_dirname = get_overrides_dirname(overrides=task, kv_sep=naming.kv_sep,
                                                           item_sep=naming.item_sep, exclude_keys=naming.exclude_keys)
    return cfg


def _is_config_group(key: str, conf_dirs: list[Path]) -> bool:
    """`model`, `scheduler`, `hydra/launcher`: a config group (a key with a slash always is);
    `model.n_layer`, `seed`: a value."""
    from hydra.core.config_store import ConfigStore

    if "/" in key:
        return True
    return any((d / key).is_dir() for d in conf_dirs) or isinstance(ConfigStore.instance().repo.get(key), dict)


def _conf_files_state(conf_dirs: list[Path]) -> tuple:
    return tuple((str(p), st.st_mtime_ns, st.st_size) for d in conf_dirs for p in sorted(Path(d).rglob("*"))
                 if p.is_file() and (st := p.stat()))


_SEARCH_PATH: list = []  # the config folders of the hydra_search_path now open (nested ones reuse it)


@contextlib.contextmanager
def hydra_search_path(conf_dirs: list[Path]):
    """Hydra's compose API over the same search path that @hydra.main builds from the flags
    (--config-dir first, then the primary folder). Inside one over the same folders, nothing more."""
    from hydra._internal.hydra import Hydra  # the public initialize_config_dir takes one folder only
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    conf_dirs = [Path(d).resolve() for d in conf_dirs]
    if _SEARCH_PATH and _SEARCH_PATH[-1] == conf_dirs and GlobalHydra.instance().is_initialized():
        yield
        return
    search_path = create_config_search_path(str(conf_dirs[-1]))
    for extra in conf_dirs[:-1]:
        search_path.prepend(provider="command-line", path=f"file://{extra}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    Hydra.create_main_hydra2(task_name="train", config_search_path=search_path)
    _SEARCH_PATH.append(conf_dirs)
    try:
        yield
    finally:
        _SEARCH_PATH.pop()
        GlobalHydra.instance().clear()


def group_options(group: str, conf_dirs: list[Path]) -> list[str]:
    """The options of a config group: its files in the config folders and, for `scheduler`, the
    registered schedules (register_defaults puts them in Hydra's ConfigStore). Empty for a key
    that is not a group."""
    from hydra.core.config_store import ConfigStore

    options = {p.stem for d in conf_dirs if (d / group).is_dir() for p in (d / group).glob("*.yaml")}
    if "/" not in group and isinstance(ConfigStore.instance().repo.get(group), dict):
        options |= {name.removesuffix(".yaml") for name in ConfigStore.instance().list(group)}
    return sorted(options)


# --- explaining a refused composition ---------------------------------------------------------

# Config groups that Hydra plugins of the `sweeps` extra provide.
PLUGIN_GROUPS = {"hydra/sweeper/optuna": "hydra-optuna-sweeper", "hydra/launcher/submitit": "hydra-submitit-launcher",
                 "hydra/launcher/joblib": "hydra-joblib-launcher"}


def explain(error: Exception, overrides: list[str], config_dirs: list[Path] | None = None,
            config_name: str = "config") -> str:
    """One line for a composition Hydra or OmegaConf refused: a missing plugin says what to
    install, an unknown group option or key lists the valid ones (and the closest), a '+' on a key
    the config holds says to drop it; anything else, Hydra's own first line."""
    import re

    dirs = [Path(d).resolve() for d in (config_dirs or [CONF_DIR])]
    text = str(error)
    for group, package in PLUGIN_GROUPS.items():
        if f"'{group}" in text:
            return (f"'{group}' comes from the {package} plugin, which is not installed; "
                    "install the sweeps extra: pip install -e '.[sweeps]'")
    missing = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    options = group_options(missing.group(1), dirs) if missing else []
    if options:
        group, value = missing.groups()
        close = difflib.get_close_matches(value, options, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown {group} '{value}'{hint}; valid: {', '.join(options)}"
    if "Could not append to config. An item is already at" in text:
        for o in overrides:
            key, _, value = o.partition("=")
            if key.startswith("+") and not key.startswith("++") and f"'{key[1:]}'" in text:
                return (f"{key[1:]} is already in the config: drop the + ({key[1:]}={value}); '+' adds a key that no "
                        "config file holds")
    for o in overrides:
        key = o.partition("=")[0]
        if f"'{key}'" in text or f"'{key.lstrip('+~')}'" in text:
            parent, _, leaf = key.lstrip("+~").rpartition(".")
            try:
                base = composed([x for x in overrides if x != o], dirs, config_name=config_name, with_hydra=False)
                node = OmegaConf.select(base, parent) if parent else base
                valid = sorted(node.keys()) if isinstance(node, DictConfig) else []
            except Exception:
                valid = []
            if valid and leaf not in valid:
                close = difflib.get_close_matches(leaf, valid, n=1)
                hint = f" (did you mean '{parent + '.' if parent else ''}{close[0]}'?)" if close else ""
                return (f"unknown config key '{key.lstrip('+~')}'{hint}; valid keys under "
                        f"{parent or 'the top level'}: {', '.join(valid)}")
    return f"bad config: {first_line(error)}"


def yaml_error_line(e) -> str:
    """One line for a config file YAML refuses (a !!python tag among them: a safe loader
    constructs no objects), naming the file and line."""
    mark = getattr(e, "problem_mark", None)
    where = f" in {mark.name}, line {mark.line + 1}" if mark else ""
    problem = getattr(e, "problem", None) or first_line(e)
    return f"a config file cannot be read{where}: {problem}; config files hold plain YAML values only"


def first_line(e: Exception) -> str:
    """The message's first line; when that only introduces the reason (Hydra's "In 'sweep/x':
    ConfigKeyError raised while composing config:"), the reason's line too."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[1]}"
    return lines[0]
