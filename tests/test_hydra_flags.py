"""Hydra 1.3's command-line flags work as in any Hydra app, and a user's --config-dir adds
config files that are used like the shipped ones (checked by the precheck too)."""

import pytest

from minigpt.launch import cli
from minigpt.launch.precheck import precheck
from minigpt.launch import compose
from helpers import ROOT, run_python
from minigpt.errors import UserError


@pytest.fixture
def user_confs(tmp_path):
    """A user's config folder with a scheduler and a model of their own."""
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "mine.yaml").write_text("name: wsd\ndecay: 0.3\nmin_lr_ratio: 0.0\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mymodel.yaml").write_text(
        "name: mymodel\nn_layer: 1\nn_head: 2\nn_embd: 32\nblock_size: 32\n")
    return tmp_path


def composed(argv):
    """The config Hydra composes for this command line, through the precheck's search path."""
    args = cli.read_command_line(argv)
    return compose.composed(args.overrides, cli.config_dirs(args), config_name=args.config_name or "config",
                            with_hydra=False)


def test_config_dir_scheduler_and_model_are_used_like_shipped_ones(user_confs, tmp_path):
    argv = ["-cd", str(user_confs), "scheduler=mine", "model=mymodel", f"hydra.run.dir={tmp_path / 'run'}"]
    precheck(argv)  # validates the user's files like any other (no "cannot read the command line")
    cfg = composed(argv)
    assert cfg.scheduler.decay == 0.3 and cfg.scheduler.name == "wsd" and cfg.model.n_embd == 32
    for flags in (["--config-dir", str(user_confs)], [f"--config-dir={user_confs}"]):
        assert composed([*flags, "scheduler=mine"]).scheduler.decay == 0.3


def test_a_user_scheduler_file_can_start_from_a_registered_schedule(user_confs, tmp_path):
    # The registered schedules are the `scheduler` group's options in Hydra's ConfigStore (no
    # file in conf/scheduler/): a user's file lists one in its defaults and changes what it needs.
    (user_confs / "scheduler" / "long_wsd.yaml").write_text("defaults:\n  - /scheduler/wsd@_here_\n  - _self_\n\n"
                                                             "decay: 0.4\n")
    argv = ["-cd", str(user_confs), "scheduler=long_wsd", f"hydra.run.dir={tmp_path / 'run'}"]
    precheck(argv)
    cfg = composed(argv)
    assert cfg.scheduler.name == "wsd" and cfg.scheduler.decay == 0.4 and cfg.scheduler.decay_shape is None
    assert list(cfg.scheduler) == list(composed(["scheduler=wsd"]).scheduler)  # every key, in the registry's order
    with pytest.raises(UserError, match=r"unknown scheduler 'long_wds' \(did you mean 'long_wsd'\?\); valid: .*cosine_warmup"):
        precheck(["-cd", str(user_confs), "scheduler=long_wds"])


def test_config_dir_options_are_listed_and_checked(user_confs):
    with pytest.raises(UserError, match=r"unknown scheduler 'mne' \(did you mean 'mine'\?\); valid: .*mine"):
        precheck(["-cd", str(user_confs), "scheduler=mne"])
    (user_confs / "scheduler" / "bad.yaml").write_text("name: wsd\ndecay: 2.5\n")
    with pytest.raises(UserError, match="decay=2.5"):
        precheck(["-cd", str(user_confs), "scheduler=bad"])
    with pytest.raises(UserError, match="--config-dir: 'no/such/dir' is not a folder"):
        precheck(["--config-dir", "no/such/dir"])


def test_config_name_and_config_path(tmp_path):
    precheck(["-cn", "config", f"hydra.run.dir={tmp_path}"])
    precheck(["--config-path", "conf", "--config-name", "config", f"hydra.run.dir={tmp_path}"])
    assert composed(["-cp", str(ROOT / "conf"), "-cn", "config"]).model.name == "cpu"
    (tmp_path / "small.yaml").write_text("defaults:\n  - config\n  - _self_\n\ntrainer:\n  max_steps: 7\n")
    assert composed(["-cd", str(tmp_path), "-cn", "small"]).trainer.max_steps == 7
    with pytest.raises(UserError, match="nosuch"):
        precheck(["-cn", "nosuch"])
    with pytest.raises(UserError, match="--config-path: 'nowhere' is not a folder"):
        precheck(["-cp", "nowhere"])


def test_multirun_flag_with_a_user_scheduler(user_confs, tmp_path, monkeypatch):
    work = tmp_path / "cwd"  # the default sweep dir (multirun/...) is here: the precheck claims its job folders
    work.mkdir()
    monkeypatch.chdir(work)
    extras = precheck(["-m", "-cd", str(user_confs), "scheduler=mine,wsd", "optim.lr=1e-3"]).extras
    assert any(e.startswith("hydra.job.config.override_dirname.exclude_keys=") and "optim.lr" in e for e in extras)
    with pytest.raises(UserError, match="unknown scheduler 'nope'"):
        precheck(["--multirun", "-cd", str(user_confs), "scheduler=mine,nope"])


def test_arch_is_a_group_without_plus():
    assert composed(["arch=post_ln"]).model.norm_position == "post"
    assert composed(["arch=pre_ln_qk"]).model.qk_layernorm is True
    assert composed([]).model.norm_position == "pre"  # no arch: the model file decides
    assert composed(["experiment=warmup_divergence_cpu", "arch=post_ln"]).model.norm_position == "post"
    with pytest.raises(UserError, match="unknown arch 'post'.*valid: post_ln, pre_ln, pre_ln_qk"):
        precheck(["arch=post"])


def hydra(*argv):
    return run_python([ROOT / "train.py", *argv], timeout=120)


@pytest.mark.slow  # its own processes
def test_print_flags_cfg_resolve_package_info_and_shell_completion(user_confs):
    out = hydra("-cd", str(user_confs), "scheduler=mine", "--cfg", "job", "--resolve", "--package", "scheduler")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# @package scheduler") and "decay: 0.3" in out.stdout and "optim" not in out.stdout
    out = hydra("--cfg", "job", "-p", "run_name", "--resolve")  # resolved: ${model.name}-${scheduler.name}
    assert out.returncode == 0 and "cpu-cosine_warmup" in out.stdout, out.stderr
    out = hydra("-cd", str(user_confs), "--info", "searchpath")
    assert out.returncode == 0 and str(user_confs) in out.stdout, out.stderr
    out = hydra("--shell-completion", "install=bash")
    assert out.returncode == 0 and "complete" in out.stdout, out.stderr
    out = hydra("--no-such-flag")
    assert out.returncode == 2 and "unrecognized arguments: --no-such-flag" in out.stderr
