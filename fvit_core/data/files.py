"""Writing user files safely: atomic writes, and checks that an output path is writable before any work.

Every front writes results through :func:`atomic_write` (readers see the old or the new file,
never a partial one) and checks its output paths first with :func:`check_writable_file` /
:func:`check_writable_folder`, so a bad path fails in milliseconds, not after an analysis.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from fvit_core.errors import InputError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Make ``path`` appear complete or not at all: ``write(tmp)`` fills a temporary file beside
    it, which is fsynced and renamed over ``path`` (``os.replace``).

    The temporary file has a unique name (``.NAME.<random>.tmp<SUFFIX>``, created exclusively, so
    two writers never share one) and is removed when anything fails (a full disk, ``path`` being
    a folder); only a kill between writing and renaming can leave it behind, and nothing reads it.
    """
    path = Path(path)
    check_replaceable(path, "output")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    tmp = Path(name)
    try:
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        check_replaceable(path, "output")  # again: the path may have changed while we wrote
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`): readers see the old or the
    new file, never a partial one.

    UTF-8; a file name that is not UTF-8 reaches Python as lone surrogates (os.fsdecode's
    surrogateescape), which UTF-8 cannot encode: they are written as ``\\udcff`` escapes, so a
    summary naming such a file is still written (issue 26: eval stopped at its summary)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="backslashreplace"))


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                  (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_replaceable(path: str | os.PathLike, what: str) -> None:
    """Refuse to replace anything but a regular file: an output is renamed over its path, which
    would turn a symbolic link, a FIFO or a device (/dev/null, /dev/full) into a regular file
    (issue 26). A path that does not exist is fine."""
    path = Path(path)
    try:
        info = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # a new name (a parent that is a file is said below)
        return
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot inspect it ({exc.strerror or exc})") from exc
    if stat.S_ISLNK(info.st_mode):
        raise InputError(f"{what} {path} is a symbolic link; writing would replace the link itself: give its target "
                         f"({os.path.realpath(path)}) or a new file name")
    for is_kind, kind in _SPECIAL_KINDS:
        if is_kind(info.st_mode):
            raise InputError(f"{what} {path} is {kind}; fvit writes regular files only: give a new file name "
                             "(--json - writes to standard output)")


def check_writable_file(path: str | os.PathLike, what: str) -> Path:
    """Check, before any work, that ``path`` can be written as a file: a regular file or a new
    name (not a folder, a symbolic link, a FIFO or a device), its nearest existing parent a
    folder this process may write into. Returns the path."""
    path = Path(path).expanduser()
    if path.is_dir() and not path.is_symlink():
        raise InputError(f"{what} {path} is a folder; give a file name")
    check_replaceable(path, what)
    _check_writable_parent(path.parent, what, path)
    return path


def check_writable_folder(path: str | os.PathLike, what: str) -> Path:
    """Check, before any work, that ``path`` is (or can be made) a folder this process may write into."""
    path = Path(path).expanduser()
    # A link to a folder is fine: files are written inside it, the link itself is never replaced.
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} exists and is not a folder")
    _check_writable_parent(path if path.exists() else path.parent, what, path)
    return path


def _check_writable_parent(folder: Path, what: str, target: Path) -> None:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"{what} {target}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what} {target}: no permission to write into {folder}")
