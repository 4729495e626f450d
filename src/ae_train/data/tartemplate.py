"""The layout of one sample and the numpy checks that prove later samples share it (tarscan's fast path).

`Template(buf, base, end, entries)` is built from the header chain of one sample walked by the generic
walk (tario.walk; `entries`: its (header position, typeflag, member) from `base` to `end`):
per header the bytes that must stay as in that sample (typeflag, name but for its key part, ustar
prefix), its checksum and size fields; per pax or GNU long-name data region the bytes that must
match. `check(i0, m, ...)` then runs the generic walk's rules over m samples at once, `stride` bytes
apart, with the lane arithmetic of tarlanes.py. A layout it does not handle raises NotRegular.
"""
from __future__ import annotations

import numpy as np

from . import tarlanes as tl
from .tario import BLOCK, Member, octal, split_key


def pax_layout(data: bytes):
    """tario.pax_fields with positions: [(start, space, key, value start, value end)], or None if unusual."""
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


class Template:
    """The layout of one sample and the per-row checks that prove a later sample has it.

    Built from the sample's header chain: per header what must stay as in row 0 (`_header`), per pax
    or long-name data region the bytes that must match (`_pax_region`, `_long_name_region`), per member
    where its key part lies (`_name_of`); `check` then runs the same checks over many rows at once."""

    def __init__(self, buf: bytes, base: int, end: int, entries: list[tuple[int, bytes, Member | None]]):
        self.buf, self.base, self.stride = buf, base, end - base
        self.heads, self.datas = [], []  # per header / per checked L or x data region
        self.names, self.members = [], []  # per member: (row offset of key part, its width, name); (ext, header)
        extent, pax_path, long_name = 0, None, None
        for hpos, kind, member in entries:
            h = self._header(buf, hpos, hpos - base, member)
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
            raise tl.NotRegular
        self._finish_heads()
        self._finish_datas()
        self.extent = extent
        self.static = self._static_words()
        key = self.names[0][2][len(self.names[0][2]) - self.names[0][1]:]  # row 0's key part
        self.key0 = tl.lane_masks(np.frombuffer(key, np.uint8))
        self.key0_high = self.key0 & tl.HIGH
        self.u8 = np.frombuffer(buf, np.uint8)
        self.u64 = np.frombuffer(buf, np.uint64, count=len(buf) // 8)

    # ---- building the template from row 0 ----

    def _header(self, buf: bytes, hpos: int, rel: int, member: Member | None) -> dict:
        """Header at hpos (rel: its offset in a row): row 0's words, the bytes that must stay (`req`:
        the typeflag; the name's bytes are added by _name_of), its checksum and size fields."""
        head = bytes(buf[hpos:hpos + BLOCK])
        size = octal(head[124:136], "size", hpos)
        req = np.zeros(BLOCK, bool)
        req[156] = True  # typeflag
        h = dict(rel=rel, block=head, row0=np.frombuffer(head, np.uint64).copy(), req=req, size=size,
                 chk=tl.OctalField(head[148:156], 148, head), szf=tl.OctalField(head[124:136], 124, head),
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
        recs = pax_layout(data)
        if recs is None or any(r[2] == b"size" for r in recs):
            raise tl.NotRegular
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
            raise tl.NotRegular
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
            d["lane0"] = tl.lane_masks(np.frombuffer(d["row0"][:width], np.uint8))
            d["digits"] = (d["last"][0], d["last"][1] - d["last"][0]) if d["last"] else None
            if d["digits"] and d["digits"][1] > 8:
                raise tl.NotRegular
            d["lanemask"] = tl.lane_masks(d["req"][:width].astype(np.uint8) * 0xFF)

    def _static_words(self) -> list[int]:
        """The words of a row that the data-region and name checks read."""
        static = set()
        for d in self.datas:
            static |= tl.span_words(d["rel"], d["width"])
            if d["digits"]:
                static |= tl.span_words(d["rel"] + d["digits"][0], d["digits"][1])
        for rel, width, _ in self.names:
            static |= tl.span_words(rel, width)
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
        words = tl.gather(self.u64, start // 8, m, self.stride, self.static)
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
        W = tl.strided(u64, o // 8, m, 64, S)
        vary = np.bitwise_or.reduce((W != h["row0"]).view(np.uint64), axis=0).view(bool)
        size_varies = bool(vary[15] or vary[16])  # the size field (bytes 124..136) differs somewhere
        req = np.nonzero(vary & h["reqw"])[0]  # words with bytes that must stay as in row 0
        summed = np.nonzero(vary | tl.CHK_WORDS)[0]  # the checksum: row 0's sum, corrected where words differ
        words = tl.gather(u64, o // 8, m, S, sorted(set(req) | set(summed) | h["chk"].words
                                                  | (h["szf"].words if size_varies else set())))
        for w in req:
            ok &= ((words[w] ^ h["row0"][w]) & h["reqmask"][w]) == 0
        rows_of = np.searchsorted(list(words), summed)  # their rows in words.block
        part = tl.byte_sums(words.block[rows_of] & tl.NO_CHK[summed][:, None])
        part0 = int(tl.byte_sums(h["row0"][summed] & tl.NO_CHK[summed]))
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

    def _check_regions(self, words: tl.Words, sizes: list[np.ndarray], ok: np.ndarray) -> None:
        """Pax and long-name data: required bytes as in row 0, lengths as the headers' sizes say."""
        for d in self.datas:
            size = sizes[d["head"]]
            for k, x in enumerate(tl.lanes(words, d["rel"], d["width"])):
                if d["lanemask"][k]:
                    ok &= ((x ^ d["lane0"][k]) & d["lanemask"][k]) == 0
            if d["digits"] is None:
                ok &= size == len(d["row0"])
            else:  # the last pax record's length follows the header's size field
                pos, n = d["digits"]
                value, good = tl.decimal_value(tl.lanes(words, d["rel"] + pos, n)[0], n)
                ok &= good & (value == size - pos) & (size > d["last"][3])

    def _check_names(self, words: tl.Words, ok: np.ndarray) -> list[np.ndarray]:
        """Every member of a row has the same key, of allowed bytes; returns the key's lanes per row."""
        lanes = None
        for rel, width, _ in self.names:
            K = tl.lanes(words, rel, width)
            if lanes is None:
                lanes = K
                ok &= tl.key_bytes_ok(K, self.key0, self.key0_high)
            else:
                for x, y in zip(K, lanes):
                    ok &= x == y
        return lanes

