"""`minigpt sample` (minigpt/tools/sample.py): a run folder, a sweep folder and a folder without checkpoints."""

import pytest

from minigpt.errors import UserError
from minigpt.run.checkpoint import checkpoint_to_read
from minigpt.run.trainer import train


def test_sample_reads_a_run_folder_in_its_own_words(make_config, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for given, expected in ((tmp_path / "nowhere", "does not exist; give a run folder"),
                            (empty, "holds no checkpoint (no checkpoints/step_*.pt); a run writes one at its end")):
        with pytest.raises(UserError) as e:
            checkpoint_to_read(given)
        assert expected in str(e.value) and "trainer.resume" not in str(e.value)
    sweep = tmp_path / "sweep"
    run = sweep / "0_seed=1"
    train(make_config(trainer__max_steps=3), run, quiet=True)
    with pytest.raises(UserError, match=f"it is a sweep folder: give one of its jobs, e.g. '{run}'"):
        checkpoint_to_read(sweep)

    from minigpt.tools.sample import main as sample
    assert sample([str(empty)]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    assert sample([str(run), "--max-new-tokens", "3"]) == 0
    assert f"loaded {run / 'checkpoints' / 'step_0000003.pt'} (step 3)" in capsys.readouterr().err
