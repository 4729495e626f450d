"""The fast path of the tar walk: runs of equally laid out samples checked at once with numpy.

`sample_table(buf, ext)` gives the same members as the generic walk in tario.py (`iter_members`, the
reference), and raises the same ShardError messages: the first samples of a shard are walked the
generic way, then each run of samples with the same layout is verified in numpy passes under the
same rules, and wherever a run ends the generic walk takes over. `tests/test_data_paths.py` holds
the two walks to the same result, damaged shards included.
"""
from __future__ import annotations

import bisect

import numpy as np

from .tario import BLOCK, Member, group_samples, members_of_buffer, split_key, walk
from .tarlanes import NotRegular
from .tartemplate import Template


# ---- The fast path ---------------------------------------------------------------------------------
#
# Shards written by one tool are regular: every sample is the same chain of headers (pax/L headers,
# members) at the same offsets, `stride` bytes after the previous sample. The generic walk (tario) reads
# the first two samples; if they share the layout, all following samples are checked at once with
# numpy over strided views of the buffer, with the generic walk's own rules: each header's checksum,
# its size field (the padded size must not change), the typeflag, the bytes the member name comes from
# (only the key part of the name may differ: ASCII, no '.', '/' or NUL), the pax records' layout, and
# that consecutive samples have different keys. The first sample that does not fit ends the run; the
# generic walk takes over from there (and raises its own errors), then the fast path tries again.
# The result is the generic walk's, member for member; only the work per sample differs.


class Group:
    """One sample walked with the generic reader from a position where no pax/L header is pending."""
    __slots__ = ("base", "end", "entries", "parts", "key", "clean")

    def __init__(self, base: int, key: str):
        self.base, self.key = base, key  # base: where the sample's first header chain starts
        self.end: int | None = None  # where the next sample's chain starts; None: archive ended
        self.entries: list[tuple[int, bytes, Member | None]] = []  # (header pos, typeflag, member)
        self.parts: dict[str, Member] = {}  # ext -> member, as group_samples makes it
        self.clean = True  # only members and their L/x headers in [base, end)

    @property
    def members(self) -> list[Member]:
        return [m for _, _, m in self.entries if m is not None]


def _walk_groups(buf: bytes, pos: int, k: int, detail: bool = True) -> list[Group]:
    """Up to `k` samples walked with the generic reader from `pos` (no pax/L header pending there).
    Each group's `end` is where the next sample's header chain starts (None: the archive ended);
    `entries` and `clean` are kept only with `detail`."""
    read = lambda off, n: buf[off:off + n]  # noqa: E731
    fresh, chain, groups = pos, [], []
    g = None
    for hpos, kind, member, nxt in walk(read, len(buf), pos):
        if member is not None:
            key, ext = split_key(member.name)
            if g is None or key != g.key:
                if g is not None:
                    g.end = fresh
                    if len(groups) == k:
                        return groups
                g = Group(fresh, key)
                groups.append(g)
            g.parts[ext] = member
            if detail:
                g.entries += chain
                g.entries.append((hpos, kind, member))
                chain = []
            fresh = nxt
        elif kind in (b"L", b"x"):
            if detail:
                chain.append((hpos, kind, None))
        else:
            if g is not None:
                g.clean = False
            chain, fresh = [], nxt
    return groups


def _walk_group(buf: bytes, pos: int) -> Group | None:
    groups = _walk_groups(buf, pos, 1)
    return groups[0] if groups else None


def _same_shape(g: Group, h: Group) -> bool:
    return (g.clean and h.clean and h.base == g.end and len(g.entries) == len(h.entries)
            and all(a[1] == b[1] and a[0] - g.base == b[0] - h.base for a, b in zip(g.entries, h.entries))
            and [m.name[len(g.key):] for m in g.members] == [m.name[len(h.key):] for m in h.members])


class _Rows:
    """`n` samples laid out like the first, `stride` bytes apart from `base`: ext -> (offset in a row, sizes);
    `key`: (row offset of the key part, its width, what the key starts with: its directories)."""

    def __init__(self, base: int, stride: int, n: int, slots: dict[str, tuple[int, np.ndarray]],
                 key: tuple[int, int, str]):
        self.base, self.stride, self.n, self.slots, self.key = base, stride, n, slots, key

    def keys(self, rows: np.ndarray) -> list[str]:
        """The keys of `rows` (indices in this run), sliced out of their headers at once."""
        rel, width, head = self.key
        at = self.base + rel + rows.astype(np.int64) * self.stride
        raw = self._buf[at[:, None] + np.arange(width)]  # (n, width) bytes of each row's key part
        return [head + k.decode("ascii") for k in raw.view(f"S{width}").ravel().tolist()]


_RUN_WORTH = 64  # a vectorized run shorter than this did not pay for its setup
_BLOCK_ROWS = 2048  # rows checked per numpy pass: their headers stay in cache between the passes


def _vectorize(buf: bytes, g: Group) -> _Rows | None:
    try:
        t = Template(buf, g.base, g.end, g.entries)
    except NotRegular:
        return None
    limit, i0, m, prev, n = t.max_rows(), 0, 32, None, None
    sizes: list[list[np.ndarray]] = [[] for _ in t.members]
    while i0 < limit:
        m = min(m, limit - i0)
        ok, differs, sz, prev = t.check(i0, m, prev)
        for acc, s in zip(sizes, sz):
            acc.append(s)
        good = ok & differs
        if not good.all():
            bad = int(np.argmin(good))
            # a repeated key merges two samples: leave both to the generic walk
            n = i0 + bad - (1 if ok[bad] else 0)
            break
        i0 += m
        m = min(8 * m, _BLOCK_ROWS)
    n = i0 if n is None else n
    if n < 2:
        return None
    slots = {}
    for (ext, j), acc in zip(t.members, sizes):
        slots[ext] = (t.heads[j]["rel"] + BLOCK, np.concatenate(acc)[:n])
    rel, width, name = t.names[0]  # the key part is ASCII of the same width in every row (the template's check)
    rows = _Rows(g.base, t.stride, n, slots, (rel, width, name[:len(name) - width].decode("utf-8")))
    rows._buf = np.frombuffer(buf, np.uint8)
    return rows


def _scan(buf: bytes) -> list:
    """The shard's samples as chunks: _Rows (checked with numpy) or lists of (key, {ext: Member}).
    Where samples are irregular, the generic walk goes on for 1, 2, 4, ... samples before the next
    try, so an irregular shard costs little more than the generic walk alone."""
    chunks: list = []

    def generic(groups: list[Group]) -> None:
        samples = [(g.key, g.parts) for g in groups]
        if not samples:
            return
        if chunks and isinstance(chunks[-1], list):
            chunks[-1].extend(samples)
        else:
            chunks.append(samples)

    pos, skip, backoff = 0, 0, 1
    while True:
        if skip:
            groups = _walk_groups(buf, pos, skip, detail=False)
            generic(groups)
            if not groups or groups[-1].end is None:
                break
            pos, skip = groups[-1].end, 0
            continue
        groups = _walk_groups(buf, pos, 2)
        if not groups:
            break
        g = groups[0]
        if len(groups) == 2 and _same_shape(g, groups[1]):
            rows = _vectorize(buf, g)
            if rows is not None:
                chunks.append(rows)
                pos = rows.base + rows.n * rows.stride
                if rows.n >= _RUN_WORTH:
                    backoff = 1
                else:
                    skip, backoff = backoff, min(2 * backoff, 1024)
                continue
        generic([g])
        if g.end is None:
            break
        pos = g.end
        skip, backoff = backoff, min(2 * backoff, 1024)
    return chunks


def _row_sample(buf: bytes, rows: _Rows, i: int) -> tuple[str, dict[str, Member]]:
    g = _walk_group(buf, rows.base + i * rows.stride)
    return g.key, g.parts


class _LazyMember:
    """A Member whose name is looked up only when asked for (error messages)."""
    __slots__ = ("offset", "size", "_table", "_i")

    def __init__(self, offset: int, size: int, table: "MemberTable", i: int):
        self.offset, self.size, self._table, self._i = offset, size, table, i

    @property
    def name(self) -> str:
        return self._table.member(self._i).name


class MemberTable:
    """The `ext` member of each sample that has one, in shard order: offsets and sizes as arrays;
    names and keys are found on demand. `table[i]` is a Member, `table[a:b]` a MemberTable."""

    def __init__(self, buf: bytes, offsets: np.ndarray, sizes: np.ndarray, locate, lo: int = 0, keys_at=None):
        self.buf, self.offsets, self.sizes, self._locate, self._lo = buf, offsets, sizes, locate, lo
        self._keys_at = keys_at  # keys of many table positions at once (sample_table's), or None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                raise ValueError("MemberTable slices take step 1")
            return MemberTable(self.buf, self.offsets[a:b], self.sizes[a:b], self._locate, self._lo + a, self._keys_at)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return _LazyMember(int(self.offsets[i]), int(self.sizes[i]), self, i)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def take(self, indices: np.ndarray) -> "MemberTable":
        """The members at `indices` (ascending), as a MemberTable."""
        at = np.asarray(indices, np.int64) + self._lo
        keys_at = None if self._keys_at is None else (lambda pos: self._keys_at(at[pos]))
        return MemberTable(self.buf, self.offsets[indices], self.sizes[indices], lambda i: self._locate(int(at[i])),
                           keys_at=keys_at)

    def member(self, i: int) -> Member:
        return self._locate(self._lo + i)[1]

    def keys_at(self, positions) -> list[str]:
        """The keys of the members at `positions`, in that order (runs of regular samples sliced at once)."""
        if self._keys_at is None:
            return [self.key(int(i)) for i in positions]
        return self._keys_at(np.asarray(positions, np.int64) + self._lo)

    def key(self, i: int) -> str:
        return self._locate(self._lo + i)[0]

    @property
    def keys(self) -> "_Keys":
        return _Keys(self)


class _Keys:
    def __init__(self, table: MemberTable):
        self._table = table

    def __len__(self) -> int:
        return len(self._table)

    def __getitem__(self, i: int) -> str:
        if i < 0:
            i += len(self)
        return self._table.key(i)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def sample_table(buf: bytes, ext: str) -> MemberTable:
    """The `ext` members of a whole shard in memory, exactly what
    `[s[1][ext] for s in group_samples(members_of_buffer(buf)) if ext in s[1]]` gives, with the same
    ShardError for a bad shard; regular runs of samples are checked with numpy instead of per member."""
    ext = ext.lower()
    chunks = _scan(buf)
    for a, b in zip(chunks, chunks[1:]):  # a key repeated across a run boundary merges samples
        last = _row_sample(buf, a, a.n - 1)[0] if isinstance(a, _Rows) else a[-1][0]
        first = _row_sample(buf, b, 0)[0] if isinstance(b, _Rows) else b[0][0]
        if last == first:
            chunks = [group_samples(members_of_buffer(buf))]
            break
    offsets, sizes, starts, parts = [], [], [], []
    count = 0
    for c in chunks:
        if isinstance(c, _Rows):
            if ext not in c.slots:
                continue
            rel, sz = c.slots[ext]
            offsets.append(c.base + rel + np.arange(c.n, dtype=np.int64) * c.stride)
            sizes.append(sz)
            starts.append(count)
            parts.append(c)
            count += c.n
        else:
            picked = [(key, parts_[ext]) for key, parts_ in c if ext in parts_]
            if picked:
                offsets.append(np.fromiter((m.offset for _, m in picked), np.int64, len(picked)))
                sizes.append(np.fromiter((m.size for _, m in picked), np.int64, len(picked)))
                starts.append(count)
                parts.append(picked)
                count += len(picked)

    def locate(i: int) -> tuple[str, Member]:
        k = bisect.bisect_right(starts, i) - 1
        part = parts[k]
        if isinstance(part, _Rows):
            key, members = _row_sample(buf, part, i - starts[k])
            return key, members[ext]
        return part[i - starts[k]]

    def keys_at(positions: np.ndarray) -> list[str]:
        out: list[str | None] = [None] * len(positions)
        part_of = np.searchsorted(np.asarray(starts, np.int64), positions, side="right") - 1
        for k in np.unique(part_of).tolist():
            where = np.flatnonzero(part_of == k)
            local = positions[where] - starts[k]
            part = parts[k]
            got = part.keys(local) if isinstance(part, _Rows) else [part[i][0] for i in local.tolist()]
            for w, key in zip(where.tolist(), got):
                out[w] = key
        return out

    empty = np.zeros(0, np.int64)
    return MemberTable(buf, np.concatenate(offsets) if offsets else empty,
                       np.concatenate(sizes) if sizes else empty, locate, keys_at=keys_at)
