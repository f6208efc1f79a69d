"""Writing files that survive a crash and a power loss.

A file is written whole to `<name>.tmp`, flushed to the disk (`fsync`), renamed over its final
name, and the folder is flushed too, so that the rename itself is on the disk. After a crash or a
power cut a reader finds either the old file or the new one, never a mix or an empty file. (A
rename alone survives a crash of the process, not a power cut: the kernel may write the new name
to the disk before the data it points at.)
"""

from __future__ import annotations

import os
from pathlib import Path


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


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`: whole, durable, and never half-written."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        replace_durably(tmp, path)
    except BaseException:
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
