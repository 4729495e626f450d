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

from .tario import (BLOCK, Member, ShardError, _entries, _octal, group_samples, members_of_buffer, npy_layout,
                    split_key)


# ---- The fast path ---------------------------------------------------------------------------------
#
# Shards written by one tool are regular: every sample is the same chain of headers (pax/L headers,
# members) at the same offsets, `stride` bytes after the previous sample. The generic walk above reads
# the first two samples; if they share the layout, all following samples are checked at once with
# numpy over strided views of the buffer, with the generic walk's own rules: each header's checksum,
# its size field (the padded size must not change), the typeflag, the bytes the member name comes from
# (only the key part of the name may differ: ASCII, no '.', '/' or NUL), the pax records' layout, and
# that consecutive samples have different keys. The first sample that does not fit ends the run; the
# generic walk takes over from there (and raises its own errors), then the fast path tries again.
# The result is the generic walk's, member for member; only the work per sample differs.


class _Group:
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


def _walk_groups(buf: bytes, pos: int, k: int, detail: bool = True) -> list[_Group]:
    """Up to `k` samples walked with the generic reader from `pos` (no pax/L header pending there).
    Each group's `end` is where the next sample's header chain starts (None: the archive ended);
    `entries` and `clean` are kept only with `detail`."""
    read = lambda off, n: buf[off:off + n]  # noqa: E731
    fresh, chain, groups = pos, [], []
    g = None
    for hpos, kind, member, nxt in _entries(read, len(buf), pos):
        if member is not None:
            key, ext = split_key(member.name)
            if g is None or key != g.key:
                if g is not None:
                    g.end = fresh
                    if len(groups) == k:
                        return groups
                g = _Group(fresh, key)
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


def _walk_group(buf: bytes, pos: int) -> _Group | None:
    groups = _walk_groups(buf, pos, 1)
    return groups[0] if groups else None


def _same_shape(g: _Group, h: _Group) -> bool:
    return (g.clean and h.clean and h.base == g.end and len(g.entries) == len(h.entries)
            and all(a[1] == b[1] and a[0] - g.base == b[0] - h.base for a, b in zip(g.entries, h.entries))
            and [m.name[len(g.key):] for m in g.members] == [m.name[len(h.key):] for m in h.members])


def _pax_layout(data: bytes):
    """_pax_fields with positions: [(start, space, key, value start, value end)], or None if unusual."""
    recs, pos = [], 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space <= pos or not data[pos:space].isdigit():
            return None
        length = int(data[pos:space])
        end = pos + length - 1
        eq = data.find(b"=", space + 1, end)
        if length < 1 or eq < 0:
            return None
        recs.append((pos, space, data[space + 1:eq], eq + 1, end))
        pos += length
    if pos != len(data) or len({r[2] for r in recs}) != len(recs):
        return None
    return recs


def _strided(arr: np.ndarray, start: int, rows: int, width: int, stride: int) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(arr[start:], shape=(rows, width), strides=(stride, arr.itemsize),
                                           writeable=False)


_U = np.uint64


class _Words(dict):
    """Word w of every row -> a contiguous (m,) array; `.block` is all of them as one (k, m) array."""
    block: np.ndarray


def _gather(u64: np.ndarray, first: int, m: int, stride: int, words: list[int]) -> _Words:
    """Words `first + w` (w in `words`, sorted) of m rows `stride` bytes apart, each as a contiguous
    (m,) array: one pass over the rows, then every per-row operation runs on compact memory."""
    rows = np.lib.stride_tricks.as_strided(u64[first:], shape=(m, words[-1] + 1), strides=(stride, 8),
                                           writeable=False)
    out = _Words(zip(words, block := rows[:, words].T.copy()))
    out.block = block
    return out


def _span_words(off: int, width: int) -> set[int]:
    return set(range(off // 8, (off + width - 1) // 8 + 1)) if width > 0 else set()


def _lanes(words: dict[int, np.ndarray], off: int, width: int) -> list[np.ndarray]:
    """Bytes [off, off + width) of each row as uint64 lanes, bytes off+8j .. off+8j+7 in lane j
    (little-endian), bytes past `width` zero; `words` holds the rows' words that overlap them."""
    lanes = []
    for j in range(0, width, 8):
        n = min(8, width - j)
        q, r = divmod(off + j, 8)
        x = words[q]
        if r:
            x = x >> _U(8 * r)
            if r + n > 8:
                x |= words[q + 1] << _U(64 - 8 * r)
        if n < 8:
            x = x & _U((1 << (8 * n)) - 1)
        lanes.append(x)
    return lanes


def _lane_masks(values) -> np.ndarray:
    """Bytes (zero-padded to whole lanes) as uint64 lanes, as _lanes reads them."""
    raw = np.asarray(values, np.uint8)
    padded = np.zeros(-(-len(raw) // 8) * 8, np.uint8)
    padded[:len(raw)] = raw
    return padded.view(np.uint64)


_SWAR = [(_U(0x00FF00FF00FF00FF), _U(8)), (_U(0x0000FFFF0000FFFF), _U(16)), (_U(0xFFFFFFFF), _U(32))]


def _digits_value(x: np.ndarray, base: int) -> np.ndarray:
    """Value of 8 digit bytes (0..base-1) per uint64, the first byte (lowest) the most significant."""
    for (mask, shift), mul in zip(_SWAR, (base, base ** 2, base ** 4)):
        x = (x & mask) * _U(mul) + ((x >> shift) & mask)
    return x


class _OctalField:
    """A numeric header field (size at 124, checksum at 148) whose row 0 reads spaces, octal digits,
    then NULs/spaces: the generic parse's common form. Rows of that form are read with lane arithmetic,
    one header word at a time; a word equal in all rows (to row 0's) adds row 0's digits."""

    def __init__(self, field: bytes, at: int, head: bytes):
        text = field.rstrip(b"\0 ")
        b = len(text)
        a = b - len(text.lstrip(b" "))
        if field[0] & 0x80 or a == b or any(c < 48 or c > 55 for c in text[a:]):
            raise _NotRegular
        self.words = _span_words(at, len(field))
        self.parts = []  # per word: (word, mask, expect, digit mask, digits in it, shift, row 0's value)
        for q in sorted(self.words):
            mask, expect, dmask, lo, hi = [0] * 8, [0] * 8, [0] * 8, 8, 0
            for p in range(8):
                f = 8 * q + p - at  # index in the field
                if 0 <= f < len(field):
                    mask[p], expect[p] = (0xFF, 0x20) if f < a else (0xF8, 0x30) if f < b else (0xDF, 0x00)
                    if a <= f < b:
                        dmask[p], lo, hi = 0x07, min(lo, p), max(hi, p + 1)
            count = max(0, hi - lo)
            digits = head[8 * q + lo:8 * q + hi]
            const = int(digits, 8) if count else 0
            self.parts.append((q, _lane_masks(mask)[0], _lane_masks(expect)[0], _lane_masks(dmask)[0], count,
                               _U(8 * (8 - hi)) if count else None, const))

    def read(self, words: dict[int, np.ndarray], vary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, row has the form) of the field, from the headers' words; `vary`: which differ."""
        ok, value = True, 0
        for q, mask, expect, dmask, count, shift, const in self.parts:
            if not vary[q]:
                value = value * 8 ** count + const
                continue
            x = words[q]
            ok = ((x & mask) == expect) & ok
            if count:
                value = value * _U(8 ** count) + _digits_value((x & dmask) << shift, 8)
        m = len(next(iter(words.values())))
        return np.broadcast_to(np.asarray(value, np.int64), (m,)).astype(np.int64), np.broadcast_to(ok, (m,))


_ONES, _HIGH = _U(0x0101010101010101), _U(0x8080808080808080)
_LOW7, _DOTS = _U(0x7F7F7F7F7F7F7F7F), _U(0x2F2F2F2F2F2F2F2F)


def _nonzero_bytes(x: np.ndarray) -> np.ndarray:
    """0x80 in each byte of x that is not zero (exact: no carries between bytes)."""
    return (((x & _LOW7) + _LOW7) | x) & _HIGH


def _key_bytes_ok(lanes: list[np.ndarray], lanes0: np.ndarray, non_ascii0: np.ndarray) -> np.ndarray:
    """Per row: the bytes of the key part that differ from row 0's are ASCII there and in row 0, and
    none is NUL, '.' or '/'. Then the row splits into key and extension where row 0 does, and two
    rows' keys are equal as decoded text exactly when they are equal as bytes."""
    ok = np.ones(len(lanes[0]), bool)
    for k, x in enumerate(lanes):
        differ = _nonzero_bytes(x ^ lanes0[k])
        if not differ.any():
            continue
        bad = (_HIGH & ~_nonzero_bytes(x)) | (_HIGH & ~_nonzero_bytes((x | _ONES) ^ _DOTS)) | (x & _HIGH)
        ok &= ((bad | non_ascii0[k]) & differ) == 0
    return ok


def _decimal_value(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Values of n <= 8 ASCII decimal digits in the low bytes of each uint64, and whether they are digits."""
    keep = _U((1 << (8 * n)) - 1)
    ok = ((x & (_U(0xF0F0F0F0F0F0F0F0) & keep)) == (_U(0x3030303030303030) & keep)) & \
        ((((x & _U(0x0F0F0F0F0F0F0F0F)) + _U(0x0606060606060606)) & (_U(0xF0F0F0F0F0F0F0F0) & keep)) == 0)
    digits = ((x & _U(0x0F0F0F0F0F0F0F0F)) & keep) << _U(8 * (8 - n))
    return _digits_value(digits, 10).astype(np.int64), ok


_CHK_WORDS = np.zeros(64, bool)
_CHK_WORDS[148 // 8:156 // 8 + 1] = True
_NO_CHK = np.full(BLOCK, 0xFF, np.uint8)
_NO_CHK[148:156] = 0
_NO_CHK = _NO_CHK.view(np.uint64)
_M8 = _U(0x00FF00FF00FF00FF)


def _byte_sums(words: np.ndarray) -> np.ndarray:
    """Sums of the bytes of uint64 words (k, ...) over the first axis (k <= 64)."""
    s = ((words & _M8) + ((words >> _U(8)) & _M8)).sum(0, dtype=np.uint64)  # 16-bit lanes, < 510 * k each
    s = (s & _U(0xFFFF)) + ((s >> _U(16)) & _U(0xFFFF)) + ((s >> _U(32)) & _U(0xFFFF)) + (s >> _U(48))
    return s.astype(np.int64)


class _Template:
    """The layout of one sample (a _Group) and the per-row checks that prove a later sample has it.

    Built from the sample's header chain: per header what must stay as in row 0 (`_header`), per pax
    or long-name data region the bytes that must match (`_pax_region`, `_long_name_region`), per member
    where its key part lies (`_name_of`); `check` then runs the same checks over many rows at once."""

    def __init__(self, buf: bytes, g: _Group):
        self.buf, self.base, self.stride = buf, g.base, g.end - g.base
        self.heads, self.datas = [], []  # per header / per checked L or x data region
        self.names, self.members = [], []  # per member: (row offset of key part, its width, name); (ext, header)
        extent, pax_path, long_name = 0, None, None
        for hpos, kind, member in g.entries:
            h = self._header(buf, hpos, hpos - g.base, member)
            data = bytes(buf[hpos + BLOCK:hpos + BLOCK + h["size"]])
            if kind == b"x":
                pax_path = self._pax_region(h, data)
            elif kind == b"L":
                long_name = self._long_name_region(h, data)
            else:
                self.names.append(self._name_of(h, pax_path, long_name))
                self.members.append((split_key(member.name)[1], len(self.heads) - 1))
                pax_path = long_name = None
            extent = max(extent, h["rel"] + BLOCK + (h["blocks"] * BLOCK if kind in (b"x", b"L") else 0))
        exts = [e for e, _ in self.members]
        if len({n[2] for n in self.names}) != 1 or len(set(exts)) != len(exts) or len(self.heads) > 64:
            raise _NotRegular
        self._finish_heads()
        self._finish_datas()
        self.extent = extent
        self.static = self._static_words()
        key = self.names[0][2][len(self.names[0][2]) - self.names[0][1]:]  # row 0's key part
        self.key0 = _lane_masks(np.frombuffer(key, np.uint8))
        self.key0_high = self.key0 & _HIGH
        self.u8 = np.frombuffer(buf, np.uint8)
        self.u64 = np.frombuffer(buf, np.uint64, count=len(buf) // 8)

    # ---- building the template from row 0 ----

    def _header(self, buf: bytes, hpos: int, rel: int, member: Member | None) -> dict:
        """Header at hpos (rel: its offset in a row): row 0's words, the bytes that must stay (`req`:
        the typeflag; the name's bytes are added by _name_of), its checksum and size fields."""
        head = bytes(buf[hpos:hpos + BLOCK])
        size = _octal(head[124:136], "size", hpos)
        req = np.zeros(BLOCK, bool)
        req[156] = True  # typeflag
        h = dict(rel=rel, block=head, row0=np.frombuffer(head, np.uint64).copy(), req=req, size=size,
                 chk=_OctalField(head[148:156], 148, head), szf=_OctalField(head[124:136], 124, head),
                 blocks=-(-size // BLOCK), sum0=sum(head) - sum(head[148:156]) + 8 * 32, member=member)
        self.heads.append(h)
        return h

    def _region(self, h: dict, data: bytes, req: np.ndarray, last) -> dict:
        d = dict(head=len(self.heads) - 1, rel=h["rel"] + BLOCK, row0=data, req=req, last=last)
        self.datas.append(d)
        return d

    def _pax_region(self, h: dict, data: bytes):
        """A pax header's records: their layout must stay; values may differ but for the last
        record's length, which follows the header's size. Returns (region, path record) or None."""
        recs = _pax_layout(data)
        if recs is None or any(r[2] == b"size" for r in recs):
            raise _NotRegular
        xreq = np.zeros(h["size"], bool)
        for start, _, _, vstart, _ in recs[:-1]:
            xreq[start:vstart] = True
        last = recs[-1]
        var_last = last[2] != b"path"  # its length may follow the header's size field
        xreq[last[1] if var_last else last[0]:last[3]] = True
        d = self._region(h, data, xreq, last if var_last else None)
        path = next((r for r in recs if r[2] == b"path"), None)
        return (d, path) if path is not None else None

    def _long_name_region(self, h: dict, data: bytes) -> dict:
        """A GNU long name (L): every byte must stay but for the key part (_name_of clears it)."""
        return self._region(h, data, np.ones(h["size"], bool), None)

    @staticmethod
    def _name_of(h: dict, pax_path, long_name: dict | None) -> tuple[int, int, bytes]:
        """Where a member's name comes from (pax path, long name, or the header's name field after a
        ustar prefix): its bytes must stay, but for the key part. (row offset of the key, width, name
        up to the extension)."""
        head, req, rel = h["block"], h["req"], h["rel"]
        if pax_path is not None:  # the name is the pax path record's value
            d, (_, _, _, vstart, vend) = pax_path
            full, rel_name, req_name, off = d["row0"][vstart:vend], d["rel"], d["req"], vstart
            req_name[vstart:vend] = True
        elif long_name is not None and long_name["row0"].rstrip(b"\0"):
            d = long_name
            full, rel_name, req_name, off = d["row0"].rstrip(b"\0"), d["rel"], d["req"], 0
        else:  # the name field, after the ustar prefix when there is one
            full, rel_name, req_name, off = head[0:100].split(b"\0", 1)[0], rel, req, 0
            req[0:100] = req[257:262] = req[345] = True
            if head[257:262] == b"ustar" and head[345] != 0:
                req[345:500] = True
                prefix = head[345:500].split(b"\0", 1)[0] + b"/"
                full, off = prefix + full, -len(prefix)
        slash = full.rfind(b"/") + 1
        dot = full.find(b".", slash)
        dot = len(full) if dot < 0 else dot
        if slash + off < 0:
            raise _NotRegular
        req_name[slash + off:dot + off] = False  # the key part, checked on its own
        return rel_name + slash + off, dot - slash, full[:dot]

    def _finish_heads(self) -> None:
        """The header bytes that must stay, as word masks."""
        for h in self.heads:
            h["reqw"] = h["req"].view(np.uint64) != 0
            h["reqmask"] = (h["req"].astype(np.uint8) * 0xFF).view(np.uint64)

    def _finish_datas(self) -> None:
        """Each data region's checked width, row 0's lanes and masks, and the last pax record's digits."""
        for d in self.datas:
            cols = np.nonzero(d["req"])[0]
            d["width"] = width = max(int(cols[-1]) + 1 if cols.size else 0, d["last"][1] if d["last"] else 0)
            d["lane0"] = _lane_masks(np.frombuffer(d["row0"][:width], np.uint8))
            d["digits"] = (d["last"][0], d["last"][1] - d["last"][0]) if d["last"] else None
            if d["digits"] and d["digits"][1] > 8:
                raise _NotRegular
            d["lanemask"] = _lane_masks(d["req"][:width].astype(np.uint8) * 0xFF)

    def _static_words(self) -> list[int]:
        """The words of a row that the data-region and name checks read."""
        static = set()
        for d in self.datas:
            static |= _span_words(d["rel"], d["width"])
            if d["digits"]:
                static |= _span_words(d["rel"] + d["digits"][0], d["digits"][1])
        for rel, width, _ in self.names:
            static |= _span_words(rel, width)
        return sorted(static)

    # ---- checking rows ----

    def max_rows(self) -> int:
        room = len(self.buf) - self.base - self.extent
        return room // self.stride + 1 if room >= 0 else 0

    def check(self, i0: int, m: int, prev_key: list | None):
        """Rows i0 .. i0+m-1: (row ok, key differs from the previous row's, member sizes, last key)."""
        start = self.base + i0 * self.stride
        ok = np.ones(m, bool)
        sizes = [self._check_header(h, start, m, ok) for h in self.heads]
        words = _gather(self.u64, start // 8, m, self.stride, self.static)
        self._check_regions(words, sizes, ok)
        lanes = self._check_names(words, ok)
        differs = np.zeros(m, bool)
        for k, x in enumerate(lanes):
            differs[1:] |= x[1:] != x[:-1]
            differs[0] |= prev_key is None or bool(x[0] != prev_key[k])
        return ok, differs, [sizes[j] for _, j in self.members], [x[-1] for x in lanes]

    def _check_header(self, h: dict, start: int, m: int, ok: np.ndarray) -> np.ndarray:
        """Header h of m rows: required bytes as in row 0, checksum, size field (same padded size);
        clears `ok` where a check fails. Returns the rows' member sizes."""
        S, u64 = self.stride, self.u64
        o = start + h["rel"]
        W = _strided(u64, o // 8, m, 64, S)
        vary = np.bitwise_or.reduce((W != h["row0"]).view(np.uint64), axis=0).view(bool)
        size_varies = bool(vary[15] or vary[16])  # the size field (bytes 124..136) differs somewhere
        req = np.nonzero(vary & h["reqw"])[0]  # words with bytes that must stay as in row 0
        summed = np.nonzero(vary | _CHK_WORDS)[0]  # the checksum: row 0's sum, corrected where words differ
        words = _gather(u64, o // 8, m, S, sorted(set(req) | set(summed) | h["chk"].words
                                                  | (h["szf"].words if size_varies else set())))
        for w in req:
            ok &= ((words[w] ^ h["row0"][w]) & h["reqmask"][w]) == 0
        rows_of = np.searchsorted(list(words), summed)  # their rows in words.block
        part = _byte_sums(words.block[rows_of] & _NO_CHK[summed][:, None])
        part0 = int(_byte_sums(h["row0"][summed] & _NO_CHK[summed]))
        stored, good = h["chk"].read(words, vary)
        ok &= good & (stored == part + (h["sum0"] - part0))
        if size_varies:
            size, good = h["szf"].read(words, vary)
            ok &= good & ((size + BLOCK - 1) // BLOCK == h["blocks"])
        else:
            size = np.full(m, h["size"], np.int64)
        if h["member"] is not None:
            ok &= o + BLOCK + np.arange(m, dtype=np.int64) * S + size <= len(self.buf)
        return size

    def _check_regions(self, words: _Words, sizes: list[np.ndarray], ok: np.ndarray) -> None:
        """Pax and long-name data: required bytes as in row 0, lengths as the headers' sizes say."""
        for d in self.datas:
            size = sizes[d["head"]]
            for k, x in enumerate(_lanes(words, d["rel"], d["width"])):
                if d["lanemask"][k]:
                    ok &= ((x ^ d["lane0"][k]) & d["lanemask"][k]) == 0
            if d["digits"] is None:
                ok &= size == len(d["row0"])
            else:  # the last pax record's length follows the header's size field
                pos, n = d["digits"]
                value, good = _decimal_value(_lanes(words, d["rel"] + pos, n)[0], n)
                ok &= good & (value == size - pos) & (size > d["last"][3])

    def _check_names(self, words: _Words, ok: np.ndarray) -> list[np.ndarray]:
        """Every member of a row has the same key, of allowed bytes; returns the key's lanes per row."""
        lanes = None
        for rel, width, _ in self.names:
            K = _lanes(words, rel, width)
            if lanes is None:
                lanes = K
                ok &= _key_bytes_ok(K, self.key0, self.key0_high)
            else:
                for x, y in zip(K, lanes):
                    ok &= x == y
        return lanes


class _NotRegular(Exception):
    pass


class _Rows:
    """`n` samples laid out like the first, `stride` bytes apart from `base`: ext -> (offset in a row, sizes)."""

    def __init__(self, base: int, stride: int, n: int, slots: dict[str, tuple[int, np.ndarray]]):
        self.base, self.stride, self.n, self.slots = base, stride, n, slots


_RUN_WORTH = 64  # a vectorized run shorter than this did not pay for its setup
_BLOCK_ROWS = 2048  # rows checked per numpy pass: their headers stay in cache between the passes


def _vectorize(buf: bytes, g: _Group) -> _Rows | None:
    try:
        t = _Template(buf, g)
    except _NotRegular:
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
    return _Rows(g.base, t.stride, n, slots)


def _scan(buf: bytes) -> list:
    """The shard's samples as chunks: _Rows (checked with numpy) or lists of (key, {ext: Member}).
    Where samples are irregular, the generic walk goes on for 1, 2, 4, ... samples before the next
    try, so an irregular shard costs little more than the generic walk alone."""
    chunks: list = []

    def generic(groups: list[_Group]) -> None:
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

    def __init__(self, buf: bytes, offsets: np.ndarray, sizes: np.ndarray, locate, lo: int = 0):
        self.buf, self.offsets, self.sizes, self._locate, self._lo = buf, offsets, sizes, locate, lo

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i):
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                raise ValueError("MemberTable slices take step 1")
            return MemberTable(self.buf, self.offsets[a:b], self.sizes[a:b], self._locate, self._lo + a)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return _LazyMember(int(self.offsets[i]), int(self.sizes[i]), self, i)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def member(self, i: int) -> Member:
        return self._locate(self._lo + i)[1]

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

    empty = np.zeros(0, np.int64)
    return MemberTable(buf, np.concatenate(offsets) if offsets else empty,
                       np.concatenate(sizes) if sizes else empty, locate)


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
            heads = _strided(u64, first // 8, n, head // 8, step)
        else:
            heads = _strided(u8, first, n, head, step)
    else:
        heads = u8[offsets[:, None] + np.arange(head)]
    if n > 1 and bool((heads != heads[0]).any()):
        return None
    return npy_rows(buf, offsets + head, dtype, input_dim)
