"""minigpt/launch/precheck.py: what is checked before Hydra starts (the table of refusals, each
one line: tests/test_bad_input.py and tests/test_adversarial.py; sweeps: tests/test_sweeps.py)."""

import pytest

from minigpt.config import Config
from minigpt.errors import UserError
from minigpt.launch.compose import composed
from minigpt.launch.precheck import check_job, check_model_fits, model_bytes, precheck


def test_check_job_returns_the_typed_config_the_job_runs(tmp_path):
    cfg = composed(["+debug=tiny", "scheduler=wsd", "optim.lr=2e-3", f"hydra.run.dir={tmp_path}/run"])
    config = check_job(cfg)
    assert isinstance(config, Config)
    assert (config.optim.lr, config.scheduler["name"], config.model.n_layer, config.trainer.max_steps) == \
        (2e-3, "wsd", 2, 20)
    assert not (tmp_path / "run").exists()  # checked, nothing written


def test_every_value_of_a_sweep_is_checked_before_anything_is_written(tmp_path):
    with pytest.raises(UserError, match="optim.lr") as e:
        precheck(["-m", "+debug=tiny", "optim.lr=1e-3,fast", f"hydra.sweep.dir={tmp_path}/sweep"])
    assert "fast" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "sweep").exists()


def test_the_smallest_memory_a_model_needs():
    config = Config()
    config.model.n_layer, config.model.n_embd, config.model.block_size, config.data.tokenizer = 2, 32, 32, "byte"
    # 12 d^2 per block and (257 + 32) x d embeddings, at 16 bytes a parameter
    assert model_bytes(config) == 16 * (12 * 2 * 32**2 + (257 + 32) * 32) == 541_184
    import torch

    check_model_fits(config, torch.device("cpu"))  # fits
    config.model.n_layer = 10**9
    with pytest.raises(UserError, match=r"model: 1000000000 layers of width 32 need at least .* GiB"):
        check_model_fits(config, torch.device("cpu"))


@pytest.mark.slow  # Hydra composes each command line a few times (a second or more)
@pytest.mark.parametrize("command", [
    [],  # a run
    ["-m", "optim.lr=1e-3,3e-3"],  # a sweep by the flag: the config's mode is still unset
    ["sweep=schedules"],  # a sweep file sets hydra.mode=MULTIRUN
    ["hydra.mode=MULTIRUN", "seed=1,2"],
])
def test_the_mode_the_precheck_hands_hydra_is_the_one_hydra_would_compose(command, tmp_path):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from minigpt.launch.compose import CONF_DIR

    argv = [*command, "+debug=tiny", f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    overrides = [a for a in argv if a != "-m"]
    mode = precheck(argv).mode
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        expected = GlobalHydra.instance().hydra.get_mode(config_name="config", overrides=overrides)
    assert mode == expected
