"""`minigpt plot-schedules` (minigpt/tools/plot_schedules.py): chosen schedules, bad input, a headless machine."""

import os
import subprocess
import sys

import pytest

from helpers import is_png

pytest.importorskip("matplotlib")


@pytest.fixture
def script():
    from minigpt.tools.plot_schedules import main

    return main


@pytest.mark.slow
def test_script_draws_chosen_schedules_with_overrides(tmp_path, script, capsys):
    out = tmp_path / "s.png"
    argv = ["wsd", "multistep", "--total-steps", "200", "1000", "--set", "wsd.decay_shape=cosine",
            "--set", "multistep.milestones=['30%', 0.6]", "--set", "wsd.decay_start=null", "-o", str(out)]
    assert script(argv) == 0
    printed = capsys.readouterr().out
    assert "multistep (1000 steps): warmup 0..199, stage 1 200..299, stage 2 300..599" in printed
    assert is_png(out)
    # Each flag given twice adds to the first (issue 27: every schedule's line, not the last one's).
    assert script(["--names", "wsd", "--names", "constant", "--total-steps", "100", "--total-steps", "50",
                   "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["wsd (100 steps)", "wsd (50 steps)", "constant (100 steps)",
                                                          "constant (50 steps)"]


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--set", "wsd.decay=2.5"], "a float length is a fraction of the run"),
        (["--set", "wsd"], "expected NAME.PARAM=VALUE"),
        (["--names", "wsd", "--set", "step.gamma=0.5"], "'step' is not among the drawn schedules"),
        (["--names", "cosine_warmpu"], "closest match: 'cosine_warmup'"),
        (["--names", "wsd", "--set", "wsd.warmup=2M tokens"], "tokens per step is unknown"),
    ],
)
def test_script_reports_bad_input_in_one_line(tmp_path, script, capsys, argv, expected):
    assert script(argv + ["--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow  # its own processes
def test_script_runs_headless(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    out = tmp_path / "all.png"
    subprocess.run([sys.executable, "-m", "minigpt", "plot-schedules", "--names", "one_cycle", "wsd", "--total-steps", "120",
                    "--out", str(out)],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    assert is_png(out)
