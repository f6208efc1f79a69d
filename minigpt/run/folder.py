"""Who may write into a run folder: one run per folder, one process at a time.

A folder *holds a run* once a run has written its records there (metrics.jsonl, summary.json
or a checkpoint). Such a folder may only be
  - continued: `trainer.resume=auto`, or `trainer.resume=<one of its own checkpoints>` (a rewind);
  - replaced, when asked for with `trainer.overwrite=true`: the old run's files are moved into
    `replaced-<date>_<time>/` inside the folder, where nothing reads them, and the new run
    starts in the emptied folder.
Anything else (a second fresh run, a branch from another run's checkpoint) is refused with one
line before anything is written, so two runs are never mixed in one metrics.jsonl.

While a run is alive it holds a lock on its folder (`.minigpt.lock`, an `flock` that the
kernel drops when the process ends, however it ends); the file names the holder (pid, host,
start time). A second process is refused with one line naming the holder. A lock file left by
a process that died holds no lock: the next run takes it over and says so.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import socket
import stat
import tempfile
import time
import uuid
from pathlib import Path

from minigpt.errors import UserError
from minigpt.files import refuse_link
from minigpt.run.metrics import METRICS_FILE, SUMMARY_FILE

LOCK_FILE = ".minigpt.lock"
REPLACED_PREFIX = "replaced-"
# What Hydra writes into the folder before the run starts: the new run's, never moved aside.
HYDRA_FILES = (".hydra",)
# What a run writes into its folder (besides Hydra's files, its log and the lock): all that
# trainer.overwrite=true moves aside; their temporaries (<name>.tmp) go with them.
RUN_FILES = ("metrics.jsonl", "metrics.jsonl.unreadable", "summary.json", "schedule.png", "error.txt",
             "lr_range_test.json", "lr_range_test.png", "checkpoints", "wandb", "tensorboard")
_CHECKPOINT_ENTRY = re.compile(r"step_\d+\.pt(\.sha256)?(\.damaged)?(\.sha256)?(\.tmp)?$")


class RunFolderInUse(UserError):
    """The folder belongs to another run or another process: nothing of it may be touched,
    not even its summary."""


def run_contents(run_dir: Path) -> list[str]:
    """What of a run a folder holds, e.g. ['metrics.jsonl (40 lines)', '2 checkpoints',
    'summary.json (completed at step 40)']; empty for a folder that holds no run."""
    run_dir = Path(run_dir)
    found = []
    metrics = run_dir / METRICS_FILE
    refuse_link(metrics)
    if metrics.is_file():
        with open(metrics, "rb") as f:
            found.append(f"{METRICS_FILE} ({sum(1 for _ in f)} lines)")
    from minigpt.run.checkpoint import list_checkpoints  # here: the lock alone needs no torch (seconds to import)

    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint{'s' if len(checkpoints) > 1 else ''}")
    summary = run_dir / SUMMARY_FILE
    if summary.is_file():
        import json

        try:
            s = json.loads(summary.read_text())
            found.append(f"{SUMMARY_FILE} ({s.get('status')} at step {s.get('step')})")
        except (ValueError, AttributeError):
            found.append(SUMMARY_FILE)
    return found


def check_run_folder(run_dir: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse (RunFolderInUse) to start a run in a folder that holds another one, unless it
    continues that run or `overwrite` asks to replace it (and the folder holds nothing but that
    run: see foreign_entries). Writes nothing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    if overwrite:
        check_overwrite(run_dir)
        return
    if resume == "auto":
        return
    if resume is not None and Path(resume).resolve().parent.parent == run_dir.resolve():
        return  # a rewind to one of its own checkpoints
    found = run_contents(run_dir)
    if not found:
        return
    what = "a branch from another run's checkpoint" if resume is not None else "a new run"
    raise RunFolderInUse(
        f"hydra.run.dir: '{run_dir}' already holds a run ({', '.join(found)}), and {what} would mix its records "
        "with it; continue that run with trainer.resume=auto, replace it with trainer.overwrite=true (its files "
        f"move to {run_dir}/{REPLACED_PREFIX}<date>_<time>/), or pick another hydra.run.dir")


def foreign_entries(run_dir: Path) -> list[str]:
    """What a folder holds that is not of the run in it (RUN_FILES, their temporaries, Hydra's
    files, logs, the lock, earlier replaced runs): sources, data, a .git/, other runs' folders.
    A checkpoints/ folder holding anything but checkpoints counts too."""
    run_dir = Path(run_dir)
    found = []
    for entry in sorted(run_dir.iterdir()):
        name = entry.name
        if (name in HYDRA_FILES or name == LOCK_FILE or name.endswith(".log")
                or name.startswith((REPLACED_PREFIX, ".minigpt-write-test-"))):
            continue
        if name in RUN_FILES or (name.endswith(".tmp") and name[:-4] in RUN_FILES):
            if name == "checkpoints" and entry.is_dir() and not entry.is_symlink():
                found += [f"checkpoints/{p.name}" for p in sorted(entry.iterdir()) if not _CHECKPOINT_ENTRY.match(p.name)]
            continue
        found.append(name + ("/" if entry.is_dir() and not entry.is_symlink() else ""))
    return found


def check_overwrite(run_dir: Path) -> None:
    """trainer.overwrite=true moves only the run's own files: a folder that also holds anything
    else (or a live run in a folder below) is refused in one line naming it, before anything moves.
    It used to move everything, a .git/ and other runs' folders (a live one ended split in two)."""
    run_dir = Path(run_dir)
    if not run_contents(run_dir):
        return  # nothing to move
    foreign = foreign_entries(run_dir)
    live = [f"{name} (in use by {holder})" for name in foreign if name.endswith("/")
            and (holder := lock_holder(run_dir / name.rstrip("/")))]
    if live:
        raise RunFolderInUse(f"hydra.run.dir: trainer.overwrite=true would move a live run below '{run_dir}': "
                             f"{', '.join(live)}; pick another hydra.run.dir (a run folder must not hold other runs)")
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise RunFolderInUse(f"hydra.run.dir: trainer.overwrite=true moves only a run's own files, and '{run_dir}' also "
                             f"holds {shown}; move those elsewhere, or pick another hydra.run.dir")


def set_aside_run(run_dir: Path) -> Path | None:
    """Move the files of the run a folder holds (RUN_FILES and their temporaries) into
    `replaced-<date>_<time>/` inside it; return the new folder, or None if there was no run.
    Refused (check_overwrite) when the folder holds anything else."""
    run_dir = Path(run_dir)
    if not run_contents(run_dir):
        return None
    check_overwrite(run_dir)
    target = run_dir / (REPLACED_PREFIX + time.strftime("%Y-%m-%d_%H-%M-%S"))
    n = 1
    while target.exists():
        n += 1
        target = run_dir / (REPLACED_PREFIX + time.strftime("%Y-%m-%d_%H-%M-%S") + f"-{n}")
    target.mkdir()
    for entry in run_dir.iterdir():
        name = entry.name
        if name in RUN_FILES or (name.endswith(".tmp") and name[:-4] in RUN_FILES):
            os.replace(entry, target / name)
    return target


class RunFolderLock:
    """An exclusive lock on a run folder for the life of a run (see the module docstring)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.took_over: str | None = None  # the holder named by a stale lock file, if any
        self.unsupported: str | None = None  # why this file system gave no lock (the run goes on unlocked)
        self.launcher: str | None = None  # the launching process that holds the lock for this job, if it does

    def acquire(self, claim: str | None = None) -> "RunFolderLock":
        """Take the lock; `claim` (the precheck's) is written beside the holder, so that the jobs
        the launching process starts in processes of their own (hydra/launcher=parallel, slurm),
        which inherit it in CLAIM_ENV, run under the launcher's lock instead of being refused."""
        fd = open_lock_file(self.path, "hydra.run.dir")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            inherited = os.environ.get(CLAIM_ENV)
            if inherited and holder.endswith(f"; claim {inherited}"):
                self.launcher = _shown(holder)  # held for this job by the process that launched it
                return self
            raise RunFolderInUse(
                f"hydra.run.dir: '{self.path.parent}' is in use by another process ({_shown(holder) or 'holder unknown'}); "
                "wait for it to end, stop it, or pick another hydra.run.dir") from None
        except OSError as e:  # a file system without flock: run unlocked rather than not at all
            os.close(fd)
            self.unsupported = e.strerror or str(e)
            return self
        self.took_over = _shown(_read_holder(fd)) or None  # the lock was free, so whoever wrote this is gone
        os.ftruncate(fd, 0)
        line = f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.pwrite(fd, (line + (f"; claim {claim}" if claim else "") + "\n").encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # an empty lock file: nobody to take over from
        except OSError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def lock_holder(run_dir: Path) -> str | None:
    """Who holds the lock of a run folder now ('pid 123 on host h, since ...'), or None if
    nobody does. Takes nothing: for checks before a run starts."""
    path = Path(run_dir) / LOCK_FILE
    if not os.path.lexists(path):
        return None
    fd = open_lock_file(path, "hydra.run.dir", create=False)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _shown(_read_holder(fd)) or "holder unknown"
        except OSError:
            return None
        return None
    finally:
        os.close(fd)  # drops the shared lock taken for the test


def _read_holder(fd: int) -> str:
    """The holder line a lock file names (the first line, printable characters only: the file is
    ours, but a line from anywhere else must not reach the log whole)."""
    text = os.pread(fd, 200, 0).decode(errors="replace").splitlines()
    return "".join(c for c in (text[0] if text else "") if c.isprintable()).strip()


def _shown(holder: str) -> str:
    """The holder line without the launcher's claim token (which is not for other users' logs)."""
    return holder.split("; claim ")[0]


# --- the claim before Hydra writes (issue 28, item 4) ------------------------------------------
#
# Hydra writes .hydra/ and the job's log into a run folder when the job starts, before any code of
# ours runs in it; the trainer's lock came seconds later (the torch import), and a second launch in
# that window rewrote the first one's .hydra/config.yaml. So the precheck, in the launching process,
# takes each folder's lock once every check has passed, before Hydra starts: held through Hydra's
# writes, and handed to the trainer when the job runs in this process (a single run, the basic and
# stacked launchers). Jobs run in processes of their own (the parallel and slurm launchers)
# inherit CLAIM_ENV and run under the launcher's lock, which it holds until the sweep ends (both
# launchers wait for every job). The alternative, Hydra writing elsewhere first and the files moved
# in after the claim, would change where .hydra/ is for every reader and still leave the remote
# launchers' own writes unclaimed.

CLAIM_ENV = "MINIGPT_RUN_CLAIM"
_CLAIMED: dict[Path, RunFolderLock] = {}


def claim_early(run_dir: Path) -> RunFolderLock:
    """Take the run folder's lock for this process before Hydra writes into it (the folder is
    created); refused (RunFolderInUse) when another process holds it."""
    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _CLAIMED:
        return _CLAIMED[key]
    run_dir.mkdir(parents=True, exist_ok=True)
    claim = os.environ.setdefault(CLAIM_ENV, uuid.uuid4().hex)
    lock = RunFolderLock(run_dir).acquire(claim)
    _CLAIMED[key] = lock
    return lock


def claimed_here(run_dir: Path) -> bool:
    """Whether this process claimed the folder early (its lock is ours, not another process')."""
    return Path(run_dir).resolve() in _CLAIMED


def take_early_claim(run_dir: Path) -> RunFolderLock | None:
    """The lock the precheck took for this folder, handed over to the run (None if none)."""
    return _CLAIMED.pop(Path(run_dir).resolve(), None)


def release_early_claims() -> None:
    """Drop the claims of an earlier precheck in this process (a new command line: tests, tools)."""
    for lock in _CLAIMED.values():
        lock.release()
    _CLAIMED.clear()


def open_lock_file(path: Path, key: str, create: bool = True) -> int:
    """A lock file opened read-write (read-only when `create` is False) without following a link;
    a path that is a link, a folder, another kind of file or cannot be opened is refused in one
    line naming it (it used to truncate a linked file, or end in a traceback)."""
    flags = (os.O_RDWR | os.O_CREAT if create else os.O_RDONLY) | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        kind = "a symbolic link" if e.errno == errno.ELOOP else f"not a lock file minigpt can open ({e.strerror})"
        raise UserError(f"{key}: the lock file '{path}' is {kind}; minigpt never follows a link there or locks "
                        "anything but its own regular file: remove it (or fix its permissions), or pick another "
                        "folder") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{key}: the lock file '{path}' is not a regular file (a FIFO, a device or a socket); remove "
                        "it, or pick another folder")
    return fd


def probe_writable(folder: Path, key: str) -> None:
    """Create and delete a file in `folder` (created if missing): a real write, which also catches
    what permission bits do not (read-only mounts, a full disk of inodes, running as root)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A fresh name, created exclusively (tempfile: O_EXCL, and no link is followed): a link
        # planted under a predictable name used to be written through.
        fd, probe = tempfile.mkstemp(prefix=".minigpt-write-test-", dir=folder)
        os.write(fd, b"x")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{key}: cannot write to '{folder}' ({e.strerror or e}); make it writable or point "
                        f"{key} somewhere writable") from None


def claim_run_folder(run_dir: Path, tc, checkpoints: bool, cache_dir: Path, say, cache_readable=None) -> RunFolderLock:
    """Take the run folder for one run, for its whole life (main rank): locked, checked for
    another run (trainer.resume, trainer.overwrite) and for writability before anything is
    written into it. Release the returned lock when the run ends."""
    probe_writable(run_dir, "hydra.run.dir")
    lock = take_early_claim(run_dir) or RunFolderLock(run_dir).acquire()
    try:
        if lock.launcher:
            say(f"run folder: held for this job by the process that launched it ({lock.launcher})")
        if lock.took_over:
            say(f"run folder: took over the lock left by {lock.took_over} (no longer running)")
        if lock.unsupported:
            say(f"run folder: no lock on {run_dir} ({lock.unsupported}); make sure no other process writes into it")
        check_run_folder(run_dir, tc.resume, tc.overwrite)
        if tc.overwrite:
            moved = set_aside_run(run_dir)
            if moved:
                say(f"run folder: trainer.overwrite=true: the run {run_dir} held moved to {moved}")
        if checkpoints:
            from minigpt.run.checkpoint import CHECKPOINT_DIR

            probe_writable(Path(run_dir) / CHECKPOINT_DIR, "hydra.run.dir")
        try:
            probe_writable(Path(cache_dir), "data.cache_dir")
        except UserError:
            if not (cache_readable and cache_readable()):  # a finished cache on a read-only mount is read only
                raise
    except BaseException:
        lock.release()
        raise
    return lock
