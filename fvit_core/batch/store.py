"""Append-only row files that survive Ctrl-C and kill -9 (atomic writes of whole files: data/files.py).

A run appends one complete line per result with a single ``os.write`` followed by ``fsync``.
A process killed mid-write can leave at most a trailing line without its newline; readers
ignore it and :meth:`AppendLog.open` cuts it off before appending again. A restarted run reads
every row already written (its own file and other ranks' files), skips their keys and appends
the rest, so no row is lost or written twice.

Under torchrun each rank appends to its own file (``rows.rank<R>.jsonl``); a single process
appends to the merged file itself (``rows.jsonl``). Rank 0 merges them at the end
(:func:`merge`): all rows, one per key, sorted, written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from fvit_core.data.files import atomic_write_text
from fvit_core.errors import InputError


def complete_lines(path: str | os.PathLike) -> list[str]:
    """The newline-terminated lines of ``path`` (without the newline); a partial tail is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n")
    if end < 0:
        return []
    return data[:end].decode("utf-8").split("\n")


class AppendLog:
    """One process's append-only line file, optionally with a header line (TSV).

    :meth:`open` repairs the file (drops a partial last line), writes the header to a new file,
    and returns self; :meth:`append` writes one line with one ``os.write`` and ``fsync``.
    """

    def __init__(self, path: str | os.PathLike, header: str | None = None):
        self.path = Path(path)
        self.header = header
        self._fd: int | None = None

    def open(self) -> "AppendLog":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        if size:
            keep = self._complete_size(fd, size)
            if keep != size:
                os.ftruncate(fd, keep)
        os.lseek(fd, 0, os.SEEK_END)
        self._fd = fd
        if os.fstat(fd).st_size == 0 and self.header is not None:
            self._write(self.header)
        return self

    @staticmethod
    def _complete_size(fd: int, size: int) -> int:
        """Bytes up to and including the last newline (0 when there is none)."""
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while len(data) < size:
            chunk = os.read(fd, size - len(data))
            if not chunk:
                break
            data += chunk
        return data.rfind(b"\n") + 1

    def _write(self, line: str) -> None:
        if "\n" in line:
            raise ValueError("a row must be one line (no newline inside)")
        data = (line + "\n").encode("utf-8")
        assert self._fd is not None, "call open() first"
        while data:  # os.write may write less than asked (signals, full disks): finish the line
            written = os.write(self._fd, data)
            data = data[written:]
        os.fsync(self._fd)

    def append(self, line: str) -> None:
        """Append one complete line and force it to disk."""
        self._write(line)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "AppendLog":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Row files of one output folder
# --------------------------------------------------------------------------------------------


class RowFiles:
    """The row files of one output folder: ``<stem>.<ext>`` (merged) and ``<stem>.rank<R>.<ext>``.

    ``encode(row) -> line`` and ``decode(line) -> row`` fix the format (JSON lines or TSV with
    a header); ``key(row)`` identifies a result, ``sort_key(row)`` orders the merged file.
    """

    def __init__(self, folder: str | os.PathLike, stem: str, ext: str, *, encode: Callable[[dict], str],
                 decode: Callable[[str], dict], key: Callable[[dict], Any], sort_key: Callable[[dict], Any],
                 header: str | None = None):
        self.folder = Path(folder)
        self.stem, self.ext = stem, ext
        self.encode, self.decode, self.key, self.sort_key = encode, decode, key, sort_key
        self.header = header

    @property
    def merged(self) -> Path:
        return self.folder / f"{self.stem}.{self.ext}"

    def live_path(self, rank: int, world_size: int) -> Path:
        """The file this rank appends to: the merged file for a single process."""
        return self.merged if world_size == 1 else self.folder / f"{self.stem}.rank{rank}.{self.ext}"

    def shard_paths(self) -> list[Path]:
        return sorted(self.folder.glob(f"{self.stem}.rank*.{self.ext}"))

    def log(self, rank: int, world_size: int) -> AppendLog:
        return AppendLog(self.live_path(rank, world_size), self.header)

    def read_file(self, path: Path) -> list[dict]:
        """Complete rows of one file (header skipped); a malformed complete line is an error."""
        lines = complete_lines(path)
        if self.header is not None and lines and lines[0] == self.header:
            lines = lines[1:]
        elif self.header is not None and lines:
            raise InputError(f"{path} does not start with the expected header {self.header!r}; "
                             "it was not written by this command: choose another --out")
        rows = []
        for number, line in enumerate(lines, start=2 if self.header else 1):
            if not line.strip():
                continue
            try:
                rows.append(self.decode(line))
            except (ValueError, KeyError, IndexError) as exc:
                raise InputError(f"{path}, line {number}: unreadable row ({exc}); fix or remove the line") from exc
        return rows

    def read_all(self) -> tuple[list[dict], dict[str, int]]:
        """Every row in the merged file and all rank files, one per key (the first seen).

        Returns (rows, count of new keys contributed by each file name).
        """
        seen: dict[Any, dict] = {}
        counts: dict[str, int] = {}
        for path in [self.merged, *self.shard_paths()]:
            added = 0
            for row in self.read_file(path):
                key = self.key(row)
                if key not in seen:
                    seen[key] = row
                    added += 1
            if path.is_file():
                counts[path.name] = added
        return list(seen.values()), counts

    def done_keys(self) -> set:
        rows, _ = self.read_all()
        return {self.key(row) for row in rows}

    def merge(self) -> tuple[list[dict], dict[str, int]]:
        """Merge every file into the merged file (sorted, one row per key, atomic); remove the
        rank files. Only rank 0 calls this, after all ranks have finished."""
        rows, counts = self.read_all()
        rows.sort(key=self.sort_key)
        lines = ([self.header] if self.header is not None else []) + [self.encode(row) for row in rows]
        atomic_write_text(self.merged, "".join(line + "\n" for line in lines))
        for path in self.shard_paths():
            path.unlink()
        return rows, counts


def json_line(row: dict) -> str:
    """One row as compact JSON (floats written exactly; NaN and infinity refused)."""
    return json.dumps(row, separators=(",", ":"), allow_nan=False)

