"""Reading a `.npy` file a user gave (`--input`, `--calib`) without trusting it.

`load_user_npy` reads the header first and checks everything it declares before any array is
allocated: the format version, a numeric dtype (never Python objects: nothing is unpickled), the
rank, the byte count against a limit and against the bytes actually in the file, and optionally a
minimum number of rows. A file that is not a `.npy` array is named by what its first bytes look
like (a PNG image, CSV text, an `.npz` archive, a pickle …). Every refusal is an
`InputFileError` naming the file.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from sim.files import read_npy_header
from toolchain.errors import InputFileError

MAX_NPY_BYTES = 2 * 1024 ** 3   # array data of one file
MAX_RANK = 32                   # numpy's limit
_MAGIC = b"\x93NUMPY"
_KINDS = "biuf"                 # bool, signed and unsigned integers, floats

# first bytes of files people give by mistake → what they are
_SIGNATURES = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"%PDF", "a PDF document"),
    (b"BZh", "bzip2-compressed data"),
    (b"\xfd7zXZ\x00", "xz-compressed data"),
]


def load_user_npy(path: str | os.PathLike, what: str, max_bytes: int = MAX_NPY_BYTES,
                  min_rows: int = 0) -> np.ndarray:
    """The array in the `.npy` file `path` (`what` names it in messages: "input",
    "calibration"). Refused with `InputFileError`, before the array is allocated: a missing or
    unreadable file; a file that is not a `.npy` array (an `.npz` or other zip archive, a
    pickle, an image, text …, named by its first bytes); a header that is damaged, of a version
    other than 1.0/2.0, or declares a non-numeric dtype (objects, strings, records), a 0-d
    array, a negative dimension or more than MAX_RANK; data over `max_bytes`; a data length
    other than what the header declares; fewer than `min_rows` rows along the first axis."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(f"{path}: no such {what} file")
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(len(_MAGIC))
            if head != _MAGIC:
                head += f.read(512 - len(head))
                raise InputFileError(f"{path}: not a .npy file ({_looks_like(head)}); give the "
                                     f"{what} array saved with numpy.save")
            f.seek(0)
            shape, fortran, dtype = _header(f, path)
            offset = f.tell()
            if not shape:
                raise InputFileError(f"{path}: a 0-d array (a single {dtype} value); give "
                                     f"(N, *input_shape)")
            if len(shape) > MAX_RANK:
                raise InputFileError(f"{path}: the header declares {len(shape)} dimensions, over "
                                     f"the limit of {MAX_RANK}")
            if any(d < 0 for d in shape):
                raise InputFileError(f"{path}: the header declares a negative dimension "
                                     f"{shape}")
            count = math.prod(shape)
            need = count * dtype.itemsize
            if need > max_bytes:
                raise InputFileError(f"{path}: the header declares {dtype} {shape}, {need} bytes "
                                     f"of data, over the {max_bytes}-byte limit; refused before "
                                     "reading it")
            have = size - offset
            if have != need:
                raise InputFileError(f"{path}: the header declares {dtype} {shape}, {need} bytes "
                                     f"of data, but the file holds {have}: "
                                     f"{'truncated' if have < need else 'trailing bytes'}")
            if shape[0] < min_rows:
                raise InputFileError(f"{path}: {shape[0]} rows (shape {shape}); the {what} needs "
                                     f"at least {min_rows}")
            data = np.fromfile(f, dtype=dtype, count=count)
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.size != count:
        raise InputFileError(f"{path}: the file ended early ({data.size} of {count} values)")
    if fortran:
        return data.reshape(shape[::-1]).transpose()
    return data.reshape(shape)


def _header(f, path) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from a `.npy` header, checked to be a plain numeric array."""
    try:
        version = np.lib.format.read_magic(f)
        if version in ((1, 0), (2, 0)):
            shape, fortran, dtype = read_npy_header(f, version)
        else:
            raise InputFileError(f"{path}: .npy format version {version[0]}.{version[1]}; "
                                 "versions 1.0 and 2.0 are read")
    except InputFileError:
        raise
    except Exception as exc:  # ValueError, SyntaxError, tokenize.TokenError … from the header
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InputFileError(f"{path}: damaged .npy header ({first})") from None
    if dtype.hasobject:
        raise InputFileError(f"{path}: the array holds Python objects (pickled data); refused, "
                             "give a numeric array")
    if dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise InputFileError(f"{path}: dtype {dtype.str} is not a plain number type; give a "
                             "numeric array (float32 for inputs)")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _looks_like(head: bytes) -> str:
    """What a file that is not a `.npy` array seems to be, from its first bytes."""
    if not head:
        return "it is empty"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "it starts like a zip archive, such as an .npz file of several arrays"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocols 2 to 5
        return "it starts like a Python pickle, which is never loaded"
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return f"it starts like {kind}"
    text = head.decode("utf-8", "ignore")
    printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
    if text and printable >= 0.95 * len(text) and len(text) >= 0.9 * len(head) - 4:
        line = text.splitlines()[0][:40] if text.splitlines() else ""
        numbers = sum(c.isdigit() for c in text)
        separated = any(sep in text for sep in (",", ";", "\t"))
        kind = "CSV text" if separated and numbers else "text"
        return f"it starts like {kind}: {line!r}"
    return f"it starts with the bytes {head[:16]!r}"
