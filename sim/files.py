"""The files a user names: reading them, and writing them only whole.

Writing (`write_files`, `atomic_write`):
- a regular file, or a name not taken yet, is written through a temp file in the same folder and
  a rename, so a reader never sees a partial file and a failure leaves no file; the file gets
  the mode a plain `open()` gives (0666 less the umask: 0644 under the usual 022). A symbolic
  link is followed: the file it points to is replaced, the link stays;
- a character device or a FIFO (`/dev/null`, `/dev/stdout`, a named pipe) is written directly,
  as a shell redirection does: a rename would put a regular file in the device's place. A FIFO
  blocks until a reader opens it;
- a folder, a block device or a socket in the output's place is refused;
- several files are written together: every regular file is complete in its temp file before
  the first rename, so a failure (a full disk, a missing folder) leaves none of them.
Every OS error is an `OutputFileError` naming the path and the reason. `check_output` and
`check_folder` make the same checks, and try creating a file in the folder, before a command's
long work starts.

Reading: `read_user_file` and `describe_missing` say what stands at a path that is not a
regular file (missing, a folder, a FIFO, a device) instead of reporting every case as missing.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
import threading
from pathlib import Path

import numpy as np

from sim.errors import InputFileError, OutputFileError

_REASONS = {
    errno.EISDIR: "it is a folder",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EFBIG: "file too large",
    errno.EPIPE: "the reader closed the pipe",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENAMETOOLONG: "file name too long",
}


def file_kind(mode: int) -> str:
    """What a stat mode is, in words."""
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "FIFO (named pipe)"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "regular file" if stat.S_ISREG(mode) else "special file"


def _reason(exc: OSError, path: Path) -> str:
    if exc.errno in _REASONS:
        return _REASONS[exc.errno]
    if exc.errno == errno.ENOENT:
        return f"folder {path.parent} does not exist"
    if exc.errno == errno.ENOTDIR:
        return f"{path.parent} is not a folder"
    return (exc.strerror or str(exc)).lower()


def output_error(path, exc: OSError) -> OutputFileError:
    """The OutputFileError for an OS error met writing `path`."""
    return OutputFileError(f"cannot write {path}: {_reason(exc, Path(path))}")


def _umask() -> int:
    """The process umask, read without changing it where the OS tells it (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _target(path) -> tuple[bool, Path]:
    """(direct, where): a character device or FIFO is written directly at `path`; a regular
    file or a new name is replaced at its real path (symbolic links followed)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise OutputFileError(f"cannot write {path}: a symbolic link to a missing "
                                  "location") from None
        return False, Path(os.path.realpath(path))
    except OSError as exc:
        raise output_error(path, exc) from None
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return True, Path(path)
    if stat.S_ISREG(st.st_mode):
        return False, Path(os.path.realpath(path))
    kind = file_kind(st.st_mode)
    raise OutputFileError(f"cannot write {path}: it is a {kind}" +
                          ("" if kind == "folder" else "; give a file name"))


def same_file(a, b) -> bool:
    """Whether paths a and b name one file (symbolic and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.realpath(a) == os.path.realpath(b)


def _probe(folder: Path, path) -> None:
    """Create and remove a file in `folder`: what a write there needs, tried now."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".sfn-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise output_error(path, exc) from None


def check_output(path, inputs: dict | None = None) -> None:
    """Raise OutputFileError if `path` cannot be written (module docstring) or names the same
    file as one of `inputs` ({what: path or None}): a missing or read-only folder, a folder or a
    block device in its place, an input it would replace."""
    direct, where = _target(path)
    for what, other in (inputs or {}).items():
        if other is not None and same_file(path, other):
            raise OutputFileError(f"cannot write {path}: it is the {what} ({other}); writing "
                                  "it would replace its own input: choose another output")
    if direct:
        if not os.access(path, os.W_OK):
            raise OutputFileError(f"cannot write {path}: permission denied")
        return
    if not where.parent.is_dir():
        shown = Path(path).parent
        if os.path.lexists(where.parent):
            raise OutputFileError(f"cannot write {path}: {shown} is not a folder")
        raise OutputFileError(f"cannot write {path}: folder {shown} does not exist")
    _probe(where.parent, path)


def check_folder(path) -> None:
    """Raise OutputFileError unless `path` is a folder files can be written into, or can be
    created (its nearest existing ancestor a writable folder)."""
    p = Path(path)
    if os.path.lexists(p):
        if not p.is_dir():
            kind = file_kind(os.stat(p).st_mode) if p.exists() else \
                "symbolic link to a missing location"
            raise OutputFileError(f"cannot write into {path}: it is a {kind}, not a folder")
        _probe(p, path)
        return
    ancestor = p.absolute().parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputFileError(f"cannot create folder {path}: {ancestor} is not a folder")
    _probe(ancestor, path)


def make_folder(path) -> list[Path]:
    """Create `path` and its missing parents; return the folders created, deepest last."""
    p = Path(path).absolute()
    missing = []
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise OutputFileError(f"cannot create folder {folder}: "
                                  f"{_reason(exc, folder)}") from None
    return list(reversed(missing))


def remove_folders(created: list[Path]) -> None:
    """Remove folders `make_folder` created, deepest first, where they are still empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _stage(path, where: Path, data: bytes, mode: int) -> str:
    """A complete temp file beside `where` holding `data`; its path."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{where.name}.", suffix=".tmp", dir=where.parent)
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        _write_fd(fd, data)
        os.fsync(fd)
        os.fchmod(fd, mode)  # mkstemp's 0600 would surprise whoever shares the file
    except BaseException as exc:
        os.close(fd)
        os.unlink(tmp)
        if isinstance(exc, OSError):
            raise output_error(path, exc) from None
        raise
    os.close(fd)
    return tmp


def _write_direct(path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        _write_fd(fd, data)
    except OSError as exc:
        raise output_error(path, exc) from None
    finally:
        os.close(fd)


def write_files(files: list[tuple]) -> None:
    """Write each (path, bytes) of `files` (module docstring): every regular file to a complete
    temp file first, then the character devices and FIFOs, then every rename; a failure before
    the renames removes every temp file and leaves no output."""
    mode = 0o666 & ~_umask()
    staged: list[tuple[str, Path, object]] = []
    try:
        targets = [(path, data, *_target(path)) for path, data in files]
        for path, data, direct, where in targets:
            if not direct:
                staged.append((_stage(path, where, data, mode), where, path))
        for path, data, direct, where in targets:
            if direct:
                _write_direct(path, data)
        while staged:
            tmp, where, path = staged[0]
            try:
                os.replace(tmp, where)
            except OSError as exc:
                raise output_error(path, exc) from None
            staged.pop(0)
    finally:
        for tmp, _, _ in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write(path, data: bytes) -> None:
    """Write `data` to `path` whole or not at all (module docstring)."""
    write_files([(path, data)])


def describe_missing(path, what: str = "file") -> str:
    """Why `path` cannot be read as a regular file: missing, or what stands there instead."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{path}: no such {what}"
    except OSError as exc:
        return f"{path}: cannot read ({(exc.strerror or str(exc)).lower()})"
    return f"{path}: a {file_kind(st.st_mode)}, not a {what}"


def read_user_file(path, limit: int, what: str = "file",
                   too_big: type[Exception] = InputFileError) -> bytes:
    """The bytes of a regular file a user named; missing, not a regular file (a folder, a FIFO,
    a device), unreadable or over `limit` bytes is an error."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(describe_missing(path, what))
    try:
        size = path.stat().st_size
        if size > limit:
            raise too_big(f"{path}: {size} bytes, over the {limit}-byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None


_NPY_HEADER_LOCK = threading.Lock()


def read_npy_header(f, version: tuple[int, int]):
    """(shape, fortran order, dtype) of a .npy header of format `version` (1.0 or 2.0), after
    its magic. One thread at a time: numpy parses the header with ast.literal_eval, and CPython
    3.11's AST constructor can fail with "recursion depth mismatch" when two threads parse at
    once (seen with concurrent artifact loads)."""
    read = {(1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0}[tuple(version)]
    with _NPY_HEADER_LOCK:
        return read(f)
