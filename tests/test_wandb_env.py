"""wandb settings: a key given in the config or on the command line wins over wandb's environment
variables, which win over our defaults (offline, project minigpt, wandb/ in the run directory)."""

from pathlib import Path

import pytest

from minigpt.launch.compose import compose
from minigpt.config import LoggerConfig
from minigpt.errors import UserError
from minigpt.run.metrics import MetricsLogger, wandb_settings

ENV = {"WANDB_PROJECT": "env-project", "WANDB_ENTITY": "env-team", "WANDB_MODE": "disabled",
       "WANDB_RUN_GROUP": "env-group", "WANDB_TAGS": "a, b", "WANDB_DIR": "/tmp/env-wandb"}


def logger_from_command_line(*overrides) -> LoggerConfig:
    """The logger config as train.py gets it from Hydra: logger=wandb plus the given overrides."""
    return compose(["logger=wandb", *overrides]).logger


def test_defaults_without_environment(tmp_path):
    s = wandb_settings(logger_from_command_line(), tmp_path, "run", env={})
    assert s == {"project": "minigpt", "entity": None, "group": None, "tags": [], "mode": "offline",
                 "dir": str(tmp_path), "name": "run"}


def test_environment_wins_over_the_config_defaults(tmp_path):
    s = wandb_settings(logger_from_command_line(), tmp_path, "run", env=ENV)
    assert s == {"project": "env-project", "entity": "env-team", "group": "env-group", "tags": ["a", "b"],
                 "mode": "disabled", "dir": "/tmp/env-wandb", "name": "run"}
    assert wandb_settings(LoggerConfig(wandb=True), tmp_path, "r", env={"WANDB_MODE": "dryrun"})["mode"] == "offline"


def test_command_line_keys_win_over_the_environment(tmp_path):
    cfg = logger_from_command_line("logger.project=cli-project", "logger.mode=offline", "logger.group=cli-group",
                                   "logger.tags=[x]", f"logger.dir={tmp_path / 'cli'}", "logger.entity=cli-team")
    s = wandb_settings(cfg, tmp_path, "run", env=ENV)
    assert s == {"project": "cli-project", "entity": "cli-team", "group": "cli-group", "tags": ["x"],
                 "mode": "offline", "dir": str(tmp_path / "cli"), "name": "run"}


def test_a_bad_wandb_mode_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"WANDB_MODE='sometimes' is not a wandb mode; accepted: online, offline"):
        wandb_settings(LoggerConfig(wandb=True), tmp_path, "run", env={"WANDB_MODE": "sometimes"})


@pytest.mark.slow  # a real (offline) wandb run: wandb starts its service process
def test_an_offline_wandb_run_takes_project_group_tags_and_dir_from_the_environment(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    wandb_dir = tmp_path / "elsewhere"
    for key, value in {**ENV, "WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_ENTITY")
    (tmp_path / "run").mkdir()
    logger = MetricsLogger(tmp_path / "run", LoggerConfig(wandb=True, tags=["cli"]), config={}, total_steps=1,
                           progress=False)
    try:
        run = logger.wandb
        assert run.project == "env-project" and run.group == "env-group" and tuple(run.tags) == ("cli",)
        assert Path(run.dir).resolve().is_relative_to(wandb_dir.resolve())  # WANDB_DIR, not the run directory
        assert not (tmp_path / "run" / "wandb").exists()
    finally:
        logger.close()
