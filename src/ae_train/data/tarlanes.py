"""Byte lanes: arithmetic on tar headers read as uint64 words, many samples at once (tarscan's fast path).

A header block is 64 little-endian uint64 words; the same word of every sample in a run is gathered
into one contiguous array (`gather`), and a field's bytes are read as lanes of 8 (`lanes`). Checks
are then a few vector operations per word: which bytes differ from sample 0's, whether they are
octal or decimal digits and their value (`OctalField`, `decimal_value`), the checksum as a sum of
bytes (`byte_sums`), whether a key's bytes are allowed (`key_bytes_ok`). Exact, no carries between
bytes; tests/test_data_paths.py holds the fast path to the generic walk's results.
"""
from __future__ import annotations

import numpy as np

from .tario import BLOCK


class NotRegular(Exception):
    """This sample's layout is not one the fast path checks: the generic walk reads it."""


def strided(arr: np.ndarray, start: int, rows: int, width: int, stride: int) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(arr[start:], shape=(rows, width), strides=(stride, arr.itemsize),
                                           writeable=False)


U = np.uint64


class Words(dict):
    """Word w of every row -> a contiguous (m,) array; `.block` is all of them as one (k, m) array."""
    block: np.ndarray


def gather(u64: np.ndarray, first: int, m: int, stride: int, words: list[int]) -> Words:
    """Words `first + w` (w in `words`, sorted) of m rows `stride` bytes apart, each as a contiguous
    (m,) array: one pass over the rows, then every per-row operation runs on compact memory."""
    rows = np.lib.stride_tricks.as_strided(u64[first:], shape=(m, words[-1] + 1), strides=(stride, 8),
                                           writeable=False)
    out = Words(zip(words, block := rows[:, words].T.copy()))
    out.block = block
    return out


def span_words(off: int, width: int) -> set[int]:
    return set(range(off // 8, (off + width - 1) // 8 + 1)) if width > 0 else set()


def lanes(words: dict[int, np.ndarray], off: int, width: int) -> list[np.ndarray]:
    """Bytes [off, off + width) of each row as uint64 lanes, bytes off+8j .. off+8j+7 in lane j
    (little-endian), bytes past `width` zero; `words` holds the rows' words that overlap them."""
    lanes = []
    for j in range(0, width, 8):
        n = min(8, width - j)
        q, r = divmod(off + j, 8)
        x = words[q]
        if r:
            x = x >> U(8 * r)
            if r + n > 8:
                x |= words[q + 1] << U(64 - 8 * r)
        if n < 8:
            x = x & U((1 << (8 * n)) - 1)
        lanes.append(x)
    return lanes


def lane_masks(values) -> np.ndarray:
    """Bytes (zero-padded to whole lanes) as uint64 lanes, as lanes reads them."""
    raw = np.asarray(values, np.uint8)
    padded = np.zeros(-(-len(raw) // 8) * 8, np.uint8)
    padded[:len(raw)] = raw
    return padded.view(np.uint64)


SWAR = [(U(0x00FF00FF00FF00FF), U(8)), (U(0x0000FFFF0000FFFF), U(16)), (U(0xFFFFFFFF), U(32))]


def digits_value(x: np.ndarray, base: int) -> np.ndarray:
    """Value of 8 digit bytes (0..base-1) per uint64, the first byte (lowest) the most significant."""
    for (mask, shift), mul in zip(SWAR, (base, base ** 2, base ** 4)):
        x = (x & mask) * U(mul) + ((x >> shift) & mask)
    return x


class OctalField:
    """A numeric header field (size at 124, checksum at 148) whose row 0 reads spaces, octal digits,
    then NULs/spaces: the generic parse's common form. Rows of that form are read with lane arithmetic,
    one header word at a time; a word equal in all rows (to row 0's) adds row 0's digits."""

    def __init__(self, field: bytes, at: int, head: bytes):
        text = field.rstrip(b"\0 ")
        b = len(text)
        a = b - len(text.lstrip(b" "))
        if field[0] & 0x80 or a == b or any(c < 48 or c > 55 for c in text[a:]):
            raise NotRegular
        self.words = span_words(at, len(field))
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
            self.parts.append((q, lane_masks(mask)[0], lane_masks(expect)[0], lane_masks(dmask)[0], count,
                               U(8 * (8 - hi)) if count else None, const))

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
                value = value * U(8 ** count) + digits_value((x & dmask) << shift, 8)
        m = len(next(iter(words.values())))
        return np.broadcast_to(np.asarray(value, np.int64), (m,)).astype(np.int64), np.broadcast_to(ok, (m,))


ONES, HIGH = U(0x0101010101010101), U(0x8080808080808080)
LOW7, DOTS = U(0x7F7F7F7F7F7F7F7F), U(0x2F2F2F2F2F2F2F2F)


def nonzero_bytes(x: np.ndarray) -> np.ndarray:
    """0x80 in each byte of x that is not zero (exact: no carries between bytes)."""
    return (((x & LOW7) + LOW7) | x) & HIGH


def key_bytes_ok(lanes: list[np.ndarray], lanes0: np.ndarray, non_ascii0: np.ndarray) -> np.ndarray:
    """Per row: the bytes of the key part that differ from row 0's are ASCII there and in row 0, and
    none is NUL, '.' or '/'. Then the row splits into key and extension where row 0 does, and two
    rows' keys are equal as decoded text exactly when they are equal as bytes."""
    ok = np.ones(len(lanes[0]), bool)
    for k, x in enumerate(lanes):
        differ = nonzero_bytes(x ^ lanes0[k])
        if not differ.any():
            continue
        bad = (HIGH & ~nonzero_bytes(x)) | (HIGH & ~nonzero_bytes((x | ONES) ^ DOTS)) | (x & HIGH)
        ok &= ((bad | non_ascii0[k]) & differ) == 0
    return ok


def decimal_value(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Values of n <= 8 ASCII decimal digits in the low bytes of each uint64, and whether they are digits."""
    keep = U((1 << (8 * n)) - 1)
    ok = ((x & (U(0xF0F0F0F0F0F0F0F0) & keep)) == (U(0x3030303030303030) & keep)) & \
        ((((x & U(0x0F0F0F0F0F0F0F0F)) + U(0x0606060606060606)) & (U(0xF0F0F0F0F0F0F0F0) & keep)) == 0)
    digits = ((x & U(0x0F0F0F0F0F0F0F0F)) & keep) << U(8 * (8 - n))
    return digits_value(digits, 10).astype(np.int64), ok


CHK_WORDS = np.zeros(64, bool)
CHK_WORDS[148 // 8:156 // 8 + 1] = True
NO_CHK = np.full(BLOCK, 0xFF, np.uint8)
NO_CHK[148:156] = 0
NO_CHK = NO_CHK.view(np.uint64)
M8 = U(0x00FF00FF00FF00FF)


def byte_sums(words: np.ndarray) -> np.ndarray:
    """Sums of the bytes of uint64 words (k, ...) over the first axis (k <= 64)."""
    s = ((words & M8) + ((words >> U(8)) & M8)).sum(0, dtype=np.uint64)  # 16-bit lanes, < 510 * k each
    s = (s & U(0xFFFF)) + ((s >> U(16)) & U(0xFFFF)) + ((s >> U(32)) & U(0xFFFF)) + (s >> U(48))
    return s.astype(np.int64)
