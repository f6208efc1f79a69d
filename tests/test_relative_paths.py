"""No absolute path in what the project commits or writes: the committed files under docs/ hold
none, and the writers (the sweep report here; `minigpt predict`'s fit, predict and optimize
in tests/test_predict.py) name their inputs relative to the folder they were run from
(minigpt.files.relative_name)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from helpers import ROOT

from minigpt.studies.sweep.jobs import Job
from minigpt.studies.sweep.report import report_markdown

# A POSIX path from the root (/tmp/x, /home/me/...) or a Windows drive path (C:\ or C:/), not
# preceded by what makes it part of a URL, a fraction (1/10, tok/s), a relative path (a/b) or a
# placeholder's (<run_dir>/checkpoints/).
ABSOLUTE = re.compile(r"(?<![\w.~:/\\>-])/(?:[\w.-]+/)+[\w.-]*|(?<![\w])[A-Za-z]:[\\/][\w.-]")
# Config groups in Hydra's defaults-list syntax (a user's scheduler file starting from a registered
# schedule: docs/code_layout.md, docs/schedules.md).
NOT_FILES = {"/scheduler/", "/scheduler/wsd"}


FENCE = re.compile(r"^```[a-z]*\n.*?^```", re.M | re.S)


def without_scratch_commands(text: str) -> str:
    """The text less /tmp/... inside fenced command blocks: a command that tells the machine it runs
    on to use its scratch folder (the GPU machine's /tmp/site, docs/performance.md) names no file of
    the machine that wrote the page. Everywhere else, /tmp counts like any absolute path."""
    return FENCE.sub(lambda block: re.sub(r"(?<![\w.~:/\\>-])/tmp/[\w./-]*", "<scratch>", block.group(0)), text)


def test_scratch_folders_in_command_blocks_are_the_only_exception():
    text = "run `x` in /tmp/a\n```bash\ncp a /tmp/site/b && ls /work/here\n```\n"
    assert [m.group(0) for m in ABSOLUTE.finditer(without_scratch_commands(text))] == ["/tmp/a", "/work/here"]


def committed_docs() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "docs"], cwd=ROOT, capture_output=True, text=True,
                               check=True, timeout=60).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist): every file there
        return sorted(p for p in (ROOT / "docs").rglob("*") if p.is_file())
    return [ROOT / n for n in names]


def test_the_pattern_finds_absolute_paths_and_nothing_else():
    found = [m.group(0) for m in ABSOLUTE.finditer(
        '# Sweep report: /work/exp/study\n"run_dirs": ["/tmp/i14runs/constant"] C:\\runs\\a '
        "see https://arxiv.org/abs/2207.14484, 1/10 of the peak, 3,559 tok/s, images/x.png, P^-1/2 H, "
        "<run_dir>/checkpoints/step_0000300.pt")]
    assert found == ["/work/exp/study", "/tmp/i14runs/constant", "C:\\r"]


def test_no_committed_file_under_docs_holds_an_absolute_path():
    files = committed_docs()
    assert len(files) > 20 and any(f.suffix == ".json" for f in files)
    hits = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a figure: matplotlib writes no path into it
            continue
        hits += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in ABSOLUTE.finditer(without_scratch_commands(text))
                 if m.group(0) not in NOT_FILES]
    assert not hits, "absolute paths under docs/ (write them relative to where the command ran):\n" + "\n".join(hits)


def test_the_sweep_report_names_its_folder_relative_to_where_it_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = report_markdown(tmp_path / "multirun" / "study", [], None, {})
    assert text.splitlines()[0] == "# Sweep report: multirun/study"
    # An override that names a folder from the root (the token cache here) is shown relative too.
    jobs = [Job(tmp_path / "multirun" / "study" / str(i), str(i), [f"seed={i}", f"data.cache_dir={tmp_path}/cache"],
                {}, None, [], None) for i in (1, 2)]
    text = report_markdown([tmp_path / "multirun" / "a", tmp_path / "multirun" / "b"], jobs, None, {})
    assert text.splitlines()[0] == "# Sweep report: multirun/a, multirun/b"
    assert "`data.cache_dir=cache`" in text and not ABSOLUTE.search(text)
