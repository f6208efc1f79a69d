"""Train a study's runs as train.py processes, a few at a time: what the loss-scale and the
beats-cosine studies share. Each run is (label, folder, overrides); its output goes to
<folder>.log beside the folder; an unfinished folder is trained again from the start."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from minigpt.errors import UserError


def train_queue(runs: Iterable[tuple[str, Path, list[str]]], jobs: int = 2, python: str = sys.executable,
                ok_status: tuple[int, ...] = (0,), poll_s: float = 0.5,
                log: Callable[[str, list[str]], None] | None = None) -> dict[str, float]:
    """Train every run, `jobs` at a time; returns {label: wall seconds}. A run that exits with a
    status outside `ok_status` stops the others and raises UserError naming its log."""
    todo, seconds, running = list(runs), {}, []
    while todo or running:
        while todo and len(running) < jobs:
            label, folder, overrides = todo.pop(0)
            folder = Path(folder)
            command = [python, "train.py", *overrides, "trainer.progress=false", f"hydra.run.dir={folder}"]
            if folder.exists():
                command.append("trainer.overwrite=true")  # an unfinished run starts again
            folder.parent.mkdir(parents=True, exist_ok=True)
            if log is not None:
                log(label, command)
            out = open(folder.parent / f"{folder.name}.log", "w")  # noqa: SIM115 (closed when the run ends)
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
            running.append((label, folder, proc, time.perf_counter(), out))
        time.sleep(poll_s)
        for item in list(running):
            label, folder, proc, start, out = item
            if proc.poll() is None:
                continue
            out.close()
            running.remove(item)
            if proc.returncode not in ok_status:
                for _, _, other, _, _ in running:
                    other.terminate()
                raise UserError(f"run {label} failed (exit {proc.returncode}); see {folder.parent / (folder.name + '.log')}")
            seconds[label] = time.perf_counter() - start
    return seconds
