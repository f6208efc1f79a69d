"""`minigpt plot-run` (minigpt/tools/plot_run.py): a real run's figure from the command line, and a run
without records. The figure itself (minigpt.plots.plot_run) is tested in test_plots.py."""

import pytest

from minigpt.run.trainer import train
from helpers import run_python


@pytest.mark.slow
def test_plot_run_script_on_a_real_run(make_config, tmp_path):
    run_dir = tmp_path / "run"
    train(make_config(trainer__max_steps=10), run_dir, quiet=True)
    out = tmp_path / "plot.png"
    proc = run_python(["-m", "minigpt", "plot-run", run_dir, "-o", out], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    proc = run_python(["-m", "minigpt", "plot-run", run_dir], timeout=300)
    assert proc.returncode == 0 and (run_dir / "run.png").exists()


def test_plot_run_script_without_records_is_one_line(tmp_path):
    proc = run_python(["-m", "minigpt", "plot-run", tmp_path], timeout=300, fork=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "metrics.jsonl" in lines[0]


