""".npy members as float32 rows: their headers read, then one strided view over a shard buffer when the
members are evenly spaced and share one .npy header (the common case: shards written by one tool), a
gather otherwise. `uniform_npy_rows` answers None whenever anything is unusual; `gather_npy` then
parses member by member and raises that member's error.
"""
from __future__ import annotations

import ast

import numpy as np

from .tario import Member, ShardError

_NPY_MAGIC = b"\x93NUMPY"
_header_cache: dict[bytes, tuple[np.dtype, tuple, int]] = {}


def npy_layout(buf: bytes, m: Member) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, data offset in buf) of a .npy member; headers repeat, so they are parsed once."""
    at = m.offset
    if buf[at:at + 6] != _NPY_MAGIC:
        raise ShardError(f"member {m.name} is not a .npy array (bad magic)")
    major = buf[at + 6]
    if major == 1:
        hlen, start = int.from_bytes(buf[at + 8:at + 10], "little"), at + 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(buf[at + 8:at + 12], "little"), at + 12
    else:
        raise ShardError(f"member {m.name}: unsupported .npy version {major}")
    header = bytes(buf[start:start + hlen])  # hashable even when buf is a bytearray
    parsed = _header_cache.get(header)
    if parsed is None:
        try:
            d = ast.literal_eval(header.decode("latin1"))
            dtype = np.dtype(d["descr"])
            shape = tuple(d["shape"])
            if d.get("fortran_order") and len(shape) > 1:
                raise ValueError("fortran order")
            if dtype.hasobject:
                raise ValueError("object arrays")
        except Exception as e:  # any malformed header is the shard's fault, not ours
            raise ShardError(f"member {m.name}: bad .npy header ({e})") from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        parsed = (dtype, shape, nbytes)
        if len(_header_cache) < 1024:
            _header_cache[header] = parsed
    dtype, shape, nbytes = parsed
    data_at = start + hlen
    if data_at + nbytes > m.offset + m.size:
        raise ShardError(f"member {m.name}: .npy data shorter than its header says")
    return dtype, shape, data_at


def _strided(arr: np.ndarray, start: int, rows: int, width: int, stride: int) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(arr[start:], shape=(rows, width), strides=(stride, arr.itemsize),
                                           writeable=False)


def npy_rows(buf: bytes, offsets: np.ndarray, dtype: np.dtype, input_dim: int) -> np.ndarray:
    """(n, input_dim) float32 rows of `dtype` values starting at `offsets`: a view when they are evenly spaced."""
    n, nbytes = len(offsets), input_dim * dtype.itemsize
    u8 = np.frombuffer(buf, np.uint8)
    step = int(offsets[1] - offsets[0]) if n > 1 else nbytes
    if step >= nbytes and (n < 3 or bool((np.diff(offsets) == step).all())):
        view = np.lib.stride_tricks.as_strided(u8[int(offsets[0]):], shape=(n, nbytes), strides=(step, 1),
                                               writeable=False)
    else:
        view = u8[offsets[:, None] + np.arange(nbytes)]
    rows = view.view(dtype).reshape(n, input_dim)
    return rows if rows.dtype == np.float32 and rows.dtype.isnative else rows.astype(np.float32)


def uniform_npy_rows(buf: bytes, members, input_dim: int) -> np.ndarray | None:
    """The rows when all members carry the same .npy header and nothing is wrong; None otherwise
    (the per-member path then gives the result or the first member's error, exactly as before)."""
    n = len(members)
    if hasattr(members, "offsets"):  # a MemberTable (tarscan.py): offsets and sizes as arrays already
        offsets, sizes = members.offsets, members.sizes
    else:
        offsets = np.fromiter((m.offset for m in members), np.int64, n)
        sizes = np.fromiter((m.size for m in members), np.int64, n)
    try:
        dtype, shape, data_at = npy_layout(buf, members[0])
    except ShardError:
        return None
    head = data_at - int(offsets[0])
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if (int(np.prod(shape, dtype=np.int64)) != input_dim or dtype.kind not in "fiub"
            or int(offsets.max()) + head > len(buf) or bool((sizes < head + nbytes).any())):
        return None
    u8 = np.frombuffer(buf, np.uint8)
    step = int(offsets[1] - offsets[0]) if n > 1 else 0
    first = int(offsets[0])
    if n > 1 and step >= head and bool((np.diff(offsets) == step).all()):
        if first % 8 == 0 and step % 8 == 0 and head % 8 == 0:  # compare 8 bytes at a time
            u64 = np.frombuffer(buf, np.uint64, count=len(buf) // 8)
            heads = _strided(u64, first // 8, n, head // 8, step)
        else:
            heads = _strided(u8, first, n, head, step)
    else:
        heads = u8[offsets[:, None] + np.arange(head)]
    if n > 1 and bool((heads != heads[0]).any()):
        return None
    return npy_rows(buf, offsets + head, dtype, input_dim)


def gather_npy(buf: bytes, members, keys, input_dim: int) -> np.ndarray:
    """The .npy payloads of `members` (Members or a MemberTable) as a float32 (n, input_dim) array,
    each header validated. When every header is the same and float32, the result is a read-only
    strided view of `buf` (no copy: the batches gather their rows from it); other dtypes are
    converted once. Mixed headers take the per-member path."""
    n = len(members)
    if n == 0:
        return np.empty((0, input_dim), np.float32)
    fast = uniform_npy_rows(buf, members, input_dim)
    if fast is not None:
        return fast
    layouts = [npy_layout(buf, m) for m in members]
    dtype, shape, _ = layouts[0]
    for key, (dt, shp, _) in zip(keys, layouts):
        size = int(np.prod(shp, dtype=np.int64))
        if size != input_dim:
            raise ShardError(f"sample {key}: array of shape {shp} has {size} values, model.input_dim is {input_dim}")
        if dt.kind not in "fiub":
            raise ShardError(f"sample {key}: dtype {dt} is not numeric")
        if dt != dtype:
            dtype = None  # mixed dtypes: one row at a time below
    if dtype is not None:
        offsets = np.fromiter((at for _, _, at in layouts), np.int64, n)
        return npy_rows(buf, offsets, dtype, input_dim)
    out = np.empty((n, input_dim), np.float32)
    for i, (dt, _, at) in enumerate(layouts):
        out[i] = np.frombuffer(buf, dt, input_dim, at)
    return out
