"""The tests' fork server (tests/forkserver.py): a forked child must look like `python ...` from outside."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import forkserver
from helpers import ROOT, run_python

pytestmark = pytest.mark.slow  # processes of their own


@pytest.fixture(autouse=True)
def server_runs():
    if forkserver.run(["-m", "minigpt", "--help"], ROOT, dict(os.environ), 120) is None:
        pytest.skip("no fork server in this session: it needs a single-threaded start (OMP_NUM_THREADS=1, "
                    "which conftest sets under pytest-xdist); every test process starts fresh instead")


@pytest.mark.parametrize("argv", [
    ["-m", "minigpt", "train", "scheduler=wds"],  # one-line error, exit status 2, before any import of torch
    ["-m", "minigpt", "no-such-tool"],  # argparse's usage error
    [str(ROOT / "train.py"), "--cfg", "job", "scheduler=wsd", "optim.lr=3e-3"],  # Hydra prints the config
])
def test_a_forked_child_gives_what_a_fresh_interpreter_gives(argv, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    forked = forkserver.run(argv, tmp_path, env, timeout=120)
    fresh = subprocess.run([sys.executable, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)


def test_signals_timeouts_and_environments_it_cannot_give():
    # a variable read at import time: the caller must start a fresh interpreter
    assert forkserver.run(["-m", "minigpt", "--help"], ROOT, dict(os.environ, OMP_NUM_THREADS="7"), 60) is None
    assert forkserver.run(["-m", "json.tool"], ROOT, dict(os.environ), 60) is None  # not this checkout's code
    with pytest.raises(subprocess.TimeoutExpired):  # killed at the timeout, as subprocess.run does
        forkserver.run([str(ROOT / "tests" / "sleeper.py"), "30"], ROOT, dict(os.environ), 1.0)
    killed = run_python([ROOT / "tests" / "sleeper.py", "30", "--kill-self"])
    assert killed.returncode == -9 and killed.stdout == "sleeping\n"
