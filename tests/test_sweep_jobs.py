"""minigpt/studies/sweep/jobs.py: a sweep's job folders read back."""

from minigpt.studies.sweep.jobs import find_jobs


def test_reads_every_kind_of_job(synthetic_sweep):
    jobs = find_jobs(synthetic_sweep)
    assert [j.name for j in jobs] == [str(i) for i in range(10)]
    assert [j.status for j in jobs] == ["completed"] * 2 + ["diverged"] + ["completed"] * 5 + ["failed", "incomplete"]
    assert jobs[8].error == "RuntimeError: CUDA error: out of memory"
    assert jobs[2].final_val_loss is None and jobs[2].diverged_step == 57
    assert jobs[0].early_peak_loss(2) == 6.0 and jobs[2].early_peak_loss(3) == 9.0
