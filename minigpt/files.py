"""Writing files that survive a crash and a power loss, and that no planted link redirects.

A file is written whole to `<name>.tmp`, flushed to the disk (`fsync`), renamed over its final
name, and the folder is flushed too, so that the rename itself is on the disk. After a crash or a
power cut a reader finds either the old file or the new one, never a mix or an empty file. (A
rename alone survives a crash of the process, not a power cut: the kernel may write the new name
to the disk before the data it points at.)

Every file minigpt creates in a run or cache folder is opened without following a symbolic
link: a temporary is created exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`, after removing a
leftover of that name, which removes a link itself and never what it points to), and a file
appended to is opened with `O_NOFOLLOW` and must be a regular file. Without this a link planted
as `summary.json.tmp` or `.minigpt.lock` made a run truncate the file it pointed to.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

from minigpt.errors import UserError


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make the renames and new names inside a folder durable (a no-op where folders cannot be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the data itself is synced
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """Flush a finished temporary file to the disk and rename it over `path`."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def not_followed(path: Path, e: OSError) -> UserError:
    """The one-line error for a path minigpt will not open: a link, a folder or another kind of file."""
    what = "a symbolic link" if e.errno == errno.ELOOP else f"not a file it can create ({e.strerror})"
    return UserError(f"'{path}' is {what}; minigpt writes its own files in run and cache folders and never follows a "
                     "link there or writes through one: remove it, or pick another folder")


def refuse_link(path: Path) -> None:
    """Refuse (one line) a file of minigpt's own that is a symbolic link, before reading it."""
    if os.path.islink(path):
        raise not_followed(path, OSError(errno.ELOOP, "a symbolic link"))


def open_new(path: Path, mode: str = "wb"):
    """Create `path` afresh for writing and return it open: a leftover of that name (a temporary a
    killed process left, or a planted link) is removed first, and the file is then created
    exclusively without following links, so nothing but a new regular file is ever written."""
    path = Path(path)
    try:
        if os.path.lexists(path) and not os.path.isdir(path) or os.path.islink(path):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EEXIST, errno.EISDIR):  # raced by a new link, or a folder there
            raise not_followed(path, e) from None
        raise
    return os.fdopen(fd, mode)


def open_append(path: Path, mode: str = "a"):
    """Open `path` to append to it, creating it if missing, without following a link; refused
    (one line) unless it is a regular file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise not_followed(path, e) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise not_followed(path, OSError(errno.EINVAL, "not a regular file"))
    return os.fdopen(fd, mode)


def write_atomic(path: Path, text: str | bytes) -> None:
    """Replace `path` with `text`: whole, durable, never half-written, never through a link."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    created = False
    try:
        with open_new(tmp, "wb") as f:
            created = True
            f.write(text.encode() if isinstance(text, str) else text)
        replace_durably(tmp, path)
    except BaseException:
        if created:
            tmp.unlink(missing_ok=True)
        raise


def relative_name(path) -> str:
    """`path` as a file the project writes names it: relative to the working directory (the place
    the command was run from), so that a report, a fit or a prediction holds no absolute path of
    the machine that made it and reads the same in any checkout."""
    try:
        return Path(os.path.relpath(Path(path).absolute())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return Path(path).as_posix()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB chunks (checkpoints, token files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
