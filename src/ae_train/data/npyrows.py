""".npy members as float32 rows: one strided view over a shard buffer when the members are evenly
spaced and share one .npy header (the common case: shards written by one tool), a gather otherwise.
`uniform_npy_rows` answers None whenever anything is unusual; the reader then parses member by member
and raises that member's error, exactly as the generic path would.
"""
from __future__ import annotations

import numpy as np

from .tario import ShardError, npy_layout
from .tarlanes import strided
from .tarscan import MemberTable


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
    if isinstance(members, MemberTable):
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
            heads = strided(u64, first // 8, n, head // 8, step)
        else:
            heads = strided(u8, first, n, head, step)
    else:
        heads = u8[offsets[:, None] + np.arange(head)]
    if n > 1 and bool((heads != heads[0]).any()):
        return None
    return npy_rows(buf, offsets + head, dtype, input_dim)
