"""`minigpt report` (minigpt/tools/report.py): its bad input from the command line."""

import pytest

from helpers import run_report
from minigpt.errors import UserError
from minigpt.studies.sweep.jobs import find_jobs


@pytest.mark.slow
def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_jobs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    proc = run_report(tmp_path / "empty")
    assert proc.returncode == 2 and proc.stderr.startswith("error: no job directories under")
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
