"""minigpt/launch/jobs.py: a job's result to its line and exit status, the stacked jobs handed back
to the caller, the line per job that ends a sweep (the exit statuses of real processes:
tests/test_cli.py, tests/test_run_integrity.py; resume commands and the sweep summary's callback:
tests/test_user_friction.py)."""

import json

import pytest

from minigpt.launch import jobs


def test_a_jobs_line_says_how_it_ended():
    assert jobs.job_result_line("0_seed=1", {"status": "completed", "final_val_loss": 3.14159}) == \
        "0_seed=1: completed; final val loss 3.1416"
    assert jobs.job_result_line("1_seed=2", {"status": "diverged", "reason": "loss is nan at step 7"}) == \
        "1_seed=2: diverged; loss is nan at step 7"
    assert jobs.job_result_line("2_seed=3", None) == "2_seed=3: no summary.json (stopped before it ended, or still running)"


def test_a_sweeps_lines_come_in_job_order(tmp_path):
    for name, summary in (("10_seed=3", {"status": "completed", "final_val_loss": 2.0}),
                          ("2_seed=2", {"status": "failed", "reason": "bad data"}), ("1_seed=1", None)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        if summary is not None:
            (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "not_a_job").mkdir()  # no .hydra/: not listed
    assert jobs.sweep_result_lines(tmp_path) == [
        "1_seed=1: no summary.json (stopped before it ended, or still running)",
        "2_seed=2: failed; bad data", "10_seed=3: completed; final val loss 2.0000"]


def test_stacked_jobs_come_back_in_the_list_the_app_was_given(monkeypatch, tmp_path):
    """hydra/launcher=stacked: each job Hydra sets up is handed back to main() in the list it gave
    the app (hydra_app(stacked)), with its typed config, folder and stack limit, and is not trained
    there; two apps keep their own lists (no state left in a module between commands)."""
    from types import SimpleNamespace

    from hydra.types import RunMode

    import minigpt.launch.train as entry
    from minigpt.launch.compose import composed

    def trained(*args, **kwargs):
        raise AssertionError("a stacked job was trained one by one")

    monkeypatch.setattr("minigpt.run.trainer.train", trained)
    first, second = [], []
    for stacked, (seed, num) in ((first, (3, 0)), (first, (4, 1)), (second, (5, 0))):
        run_dir = tmp_path / f"{num}_seed={seed}"
        hc = SimpleNamespace(runtime=SimpleNamespace(output_dir=str(run_dir), choices={"hydra/launcher": "stacked"}),
                             mode=RunMode.MULTIRUN, job=SimpleNamespace(num=num), sweep=SimpleNamespace(dir=str(tmp_path)),
                             sweeper={"max_batch_size": 2})
        monkeypatch.setattr(entry.HydraConfig, "get", staticmethod(lambda hc=hc: hc))
        assert entry.hydra_app(stacked)(composed(["+debug=tiny", f"seed={seed}"], with_hydra=False)) is None
    assert [(j.config.seed, j.run_dir.name, j.max_stack) for j in first] == [(3, "0_seed=3", 2), (4, "1_seed=4", 2)]
    assert [j.config.seed for j in second] == [5]
    assert all(isinstance(j, jobs.StackedJob) and j.config.logger.group == tmp_path.name for j in first + second)
    with pytest.raises(RuntimeError, match="needs the caller's list of stacked jobs"):
        jobs.run_job(first[0].config, hc)
