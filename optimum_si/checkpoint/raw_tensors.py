"""Which entries of a safetensors file's matrices are non-zero, read with numpy from the file's own layout: no torch,
so that `optimum-si report` answers in a moment.

A safetensors file is an 8-byte little-endian header length, a JSON header (`{name: {dtype, shape, data_offsets}}`)
and the tensors' bytes. A floating-point entry is zero when every bit but the sign is 0 (+0 and -0), whatever its
width (float64 down to float8), so the test runs on the raw bits and needs no float type numpy may lack (bfloat16).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import numpy as np

__all__ = ["nonzero_matrices"]

# safetensors dtype -> (unsigned integer of its width, whether it is a float with a sign bit to ignore)
_DTYPES = {
    "F64": ("<u8", True), "F32": ("<u4", True), "F16": ("<u2", True), "BF16": ("<u2", True),
    "F8_E4M3": ("u1", True), "F8_E5M2": ("u1", True),
    "I64": ("<u8", False), "I32": ("<u4", False), "I16": ("<u2", False), "I8": ("u1", False),
    "U64": ("<u8", False), "U32": ("<u4", False), "U16": ("<u2", False), "U8": ("u1", False), "BOOL": ("u1", False),
}
# A header is JSON text; safetensors itself refuses headers above 100 MB.
_MAX_HEADER = 100_000_000


def _header(path: str) -> tuple[dict, int]:
    """The file's JSON header and where its data starts."""
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path} is too short for a safetensors header")
        (size,) = struct.unpack("<Q", prefix)
        if size > _MAX_HEADER:
            raise ValueError(f"{path} declares a {size}-byte header; it is not a safetensors file")
        raw = handle.read(size)
    if len(raw) < size:
        raise ValueError(f"{path} ends inside its header")
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path} has an unreadable header ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a header that is not a JSON object")
    return header, 8 + size


def nonzero_matrices(path: str | os.PathLike, suffix: str = ".weight") -> Iterator[tuple[str, np.ndarray]]:
    """`(name, boolean [rows, cols] array of the non-zero entries)` of every 2-D tensor whose name ends with
    `suffix`, in name order, one at a time (the file is memory-mapped). ValueError for a file that is not a complete
    safetensors file or holds a dtype this reader does not know."""
    path = os.fspath(path)
    header, start = _header(path)
    file_size = os.path.getsize(path)
    for name in sorted(header):
        info = header[name]
        if name == "__metadata__" or not name.endswith(suffix):
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(n) for n in info["shape"]], info["data_offsets"]
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"{path}: the header entry of {name} is malformed ({err})") from None
        if len(shape) != 2:
            continue
        if dtype not in _DTYPES:
            raise ValueError(f"{path}: {name} has dtype {dtype}, which the sparsity report cannot read")
        unsigned, is_float = _DTYPES[dtype]
        width = np.dtype(unsigned).itemsize
        if end - begin != shape[0] * shape[1] * width or start + end > file_size or begin < 0:
            raise ValueError(f"{path} is truncated or corrupted: {name}'s bytes are missing")
        if not end - begin:
            yield name, np.zeros(shape, dtype=bool)
            continue
        bits = np.memmap(path, dtype=unsigned, mode="r", offset=start + begin, shape=(shape[0], shape[1]))
        if is_float:
            magnitude = np.array((1 << (8 * width - 1)) - 1, dtype=unsigned)  # every bit but the sign
            yield name, (bits & magnitude) != 0
        else:
            yield name, bits != 0
        del bits  # the map closes with its last reference
