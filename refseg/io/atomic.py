"""Atomic file writes: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_modes(root: Path) -> None:
    """Give ``root`` and everything in it the modes the umask gives new files and folders
    (mkdtemp makes a folder 0700, mkstemp and safetensors a file 0600: a checkpoint would
    be unreadable to those who can read the rest of its run). Links are left alone."""
    mask = _umask()
    for path in (root, *root.rglob("*")):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def check_output(path: str | Path, *, folder: bool = False) -> Path:
    """Fail before any work, naming ``path``, when an output cannot go there: a folder given
    for a file, a file given for a folder, a file where a parent folder should be, or a
    folder it would go in that this user cannot write.

    Raises:
        DataError: with the path and the reason.
    """
    from refseg.errors import DataError

    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise DataError(f"{path}: exists and is not a folder (an output folder is expected)")
    if not folder and path.is_dir():
        raise DataError(f"{path}: is a folder (an output file name is expected)")
    parent = path if folder else path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise DataError(f"{path}: cannot be written, {ancestor} is a file")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise DataError(f"{path}: cannot be written, {ancestor} is not writable")
            break
    return path


def check_distinct(output: str | Path, output_option: str,
                   other: str | Path, other_option: str) -> None:
    """Fail before any work when the file of ``output_option`` is that of ``other_option``
    (e.g. ``--out`` naming the ``--predictions`` file): writing it would replace the other.

    Raises:
        DataError: naming both options and the file.
    """
    from refseg.errors import DataError

    output, other = Path(output), Path(other)
    same = output.resolve() == other.resolve()
    if not same and output.exists() and other.exists():
        same = os.path.samefile(output, other)  # hard links, case-insensitive file systems
    if same:
        raise DataError(f"{output}: {output_option} and {other_option} name the same file; "
                        f"writing {output_option} would replace it")


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")
