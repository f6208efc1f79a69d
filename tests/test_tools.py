"""The `minigpt` command (minigpt/__main__.py): the tools it lists, one argparse convention, the
old script paths that point to it, and `minigpt train` as the same app as `python train.py`."""

from __future__ import annotations

import runpy
import sys

import pytest

from helpers import ROOT, run_python
from minigpt import __main__ as command

TOOLS = ["train", "report", "plot-run", "plot-schedules", "predict", "sample", "export-hf"]
SHIMS = {"report.py": "report", "plot_run.py": "plot-run", "plot_schedules.py": "plot-schedules",
         "predict_loss.py": "predict", "sample.py": "sample", "export_hf.py": "export-hf"}


def test_help_lists_every_tool(capsys):
    assert command.main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.split("tools:\n")[1].split("\n\n")[0].splitlines()]
    assert listed == TOOLS
    assert command.main([]) == 2  # nothing to run: the same listing, on stderr
    assert "tools:" in capsys.readouterr().err


def test_an_unknown_tool_is_one_line_with_the_closest(capsys):
    assert command.main(["plot-runs", "x"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: unknown tool 'plot-runs' (did you mean 'plot-run'?); valid: "
                   "train, report, plot-run, plot-schedules, predict, sample, export-hf\n")


def help_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        command.main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("tool", TOOLS[1:])
def test_each_tool_has_one_convention(tool, capsys):
    """`minigpt <tool> --help`: named so, its inputs positional, a written file -o/--out, examples."""
    out = help_of([tool], capsys)
    assert out.startswith(f"usage: minigpt {tool} ")
    examples = out.split("examples:\n", 1)[1]
    assert examples.lstrip().startswith(f"minigpt {tool} ")
    writes = {"report": [tool], "plot-run": [tool], "plot-schedules": [tool], "predict": [tool, "fit"]}
    if tool in writes:  # sample prints its text; the others write files
        assert "-o OUT, --out OUT" in help_of(writes[tool], capsys)


@pytest.mark.parametrize("script", list(SHIMS))
def test_the_old_script_paths_say_where_the_tool_went_and_run_it(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / script), "--help"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(ROOT / "scripts" / script), run_name="__main__")
    assert stop.value.code == 0
    out, err = capsys.readouterr()
    tool = SHIMS[script]
    assert err == f"scripts/{script} moved: run `minigpt {tool} ...` (minigpt/tools/{tool.replace('-', '_')}.py)\n"
    assert out.startswith(f"usage: minigpt {tool} ")  # and the tool itself ran


@pytest.mark.slow  # two processes of the Hydra app
def test_minigpt_train_is_python_train_py(tmp_path):
    argv = ["scheduler=wsd", "optim.lr=3e-3", "--cfg", "job", "--resolve"]
    via_command = run_python(["-m", "minigpt", "train", *argv], cwd=tmp_path, timeout=120)
    via_script = run_python([ROOT / "train.py", *argv], cwd=tmp_path, timeout=120)
    assert via_command.returncode == via_script.returncode == 0, via_command.stderr + via_script.stderr
    assert via_command.stdout == via_script.stdout and "name: wsd" in via_command.stdout
    bad = run_python(["-m", "minigpt", "train", "scheduler=wds"], cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown scheduler 'wds' (did you mean 'wsd'?)")
