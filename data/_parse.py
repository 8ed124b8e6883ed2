"""Vectorised fast path for parsing tables of non-negative integers (private helper).

Both readers (``sequences.read_sasrec_text`` and ``movielens.read_ratings``) first try this
numpy parser, which accepts only clean files, and fall back to a line-by-line parser that
reports the first bad line. The fast path therefore never has to produce error messages.
"""

from __future__ import annotations

import numpy as np

# Bytes that ``bytes.split()`` treats as whitespace: space, \t, \n, \v, \f, \r.
_WHITESPACE = np.array([32, 9, 10, 11, 12, 13], dtype=np.uint8)
_MAX_DIGITS = 18  # every 18-digit number fits in int64
_CHUNK = 1 << 20  # bytes per block; temporaries take about 40 bytes per input byte
_UTF8_BOM = b"\xef\xbb\xbf"


def strip_utf8_bom(raw: bytes) -> bytes:
    """``raw`` without a leading UTF-8 byte-order mark (editors on Windows write one)."""
    return raw[len(_UTF8_BOM):] if raw.startswith(_UTF8_BOM) else raw


def parse_int_table(raw: bytes, num_fields: int, sep: bytes | None = None) -> np.ndarray | None:
    """Parse ``raw`` into an ``(rows, num_fields)`` int64 array, or return None.

    Args:
        raw: file contents. Lines end in ``\\n`` (``\\r\\n`` is fine); trailing blank lines are
            ignored.
        num_fields: fields every non-blank line must have.
        sep: field separator; None means runs of whitespace. With a separator (``b"::"``) only
            digits, the separator and line ends may occur.

    Returns:
        The table, or None if ``raw`` holds anything but unsigned integers, a line with another
        number of fields, a blank line before the last non-blank one, or a number too long for
        int64. None means "use the line-by-line parser", which names the problem.
    """
    blocks = []
    start = 0
    while start < len(raw):
        stop = raw.find(b"\n", start + _CHUNK)
        stop = len(raw) if stop == -1 else stop + 1
        block = _parse_block(raw[start:stop], num_fields, sep, last=stop == len(raw))
        if block is None:
            return None
        blocks.append(block)
        start = stop
    if not blocks:
        return np.zeros((0, num_fields), dtype=np.int64)
    return np.concatenate(blocks)


def _parse_block(raw: bytes, num_fields: int, sep: bytes | None, last: bool) -> np.ndarray | None:
    """``parse_int_table`` on whole lines; a block that is not ``last`` may not end blank."""
    if sep is not None:
        if raw.translate(None, b"0123456789:\r\n"):
            return None
        num_seps = raw.count(sep)
        raw = raw.replace(sep, b" ")
        if b":" in raw:
            return None
    buf = np.frombuffer(raw, dtype=np.uint8)
    digit = (buf >= ord("0")) & (buf <= ord("9"))
    if not np.all(digit | np.isin(buf, _WHITESPACE)):
        return None
    is_start = digit.copy()
    is_start[1:] &= ~digit[:-1]
    starts = np.flatnonzero(is_start)
    ends = np.flatnonzero(digit & ~np.r_[digit[1:], False]) + 1
    if starts.size % num_fields or (starts.size and int((ends - starts).max()) > _MAX_DIGITS):
        return None
    # Token k must sit on line k // num_fields: every line has exactly num_fields fields and no
    # blank line comes before the last non-blank one.
    newlines = np.flatnonzero(buf == ord("\n"))
    if not np.array_equal(np.searchsorted(newlines, starts), np.arange(starts.size) // num_fields):
        return None
    rows = starts.size // num_fields
    if not last and newlines.size != rows:
        return None  # blank lines at the end of a block are not at the end of the file
    if sep is not None and num_seps != rows * (num_fields - 1):
        return None  # e.g. a leading or trailing separator on some line
    if rows == 0:
        return np.zeros((0, num_fields), dtype=np.int64)
    # value = sum over its digits of digit * 10**(number of digits to its right).
    digit_pos = np.flatnonzero(digit)
    token = np.cumsum(is_start[digit_pos]) - 1
    power = np.power(10, ends[token] - 1 - digit_pos, dtype=np.int64)
    terms = (buf[digit_pos] - ord("0")).astype(np.int64) * power
    values = np.add.reduceat(terms, np.searchsorted(digit_pos, starts))
    return values.reshape(rows, num_fields)
