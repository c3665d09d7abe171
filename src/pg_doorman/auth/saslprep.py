"""SASLprep (RFC 4013, a profile of stringprep RFC 3454) for SCRAM passwords, the way PostgreSQL does it.

PostgreSQL (``src/common/saslprep.c``, shared by the server and libpq) prepares a password like this:

* a pure-ASCII password is used as is, with no checks at all;
* otherwise: map non-ASCII spaces (table C.1.2) to U+0020 and drop the "commonly mapped to nothing"
  characters (table B.1); an empty result is prohibited; normalise with NFKC; reject prohibited output
  (C.1.2, C.2.1, C.2.2, C.3-C.9) and unassigned code points (A.1); apply the bidi rule (D.1/D.2).

Two PostgreSQL quirks are mirrored on purpose, because the bytes must match what PostgreSQL hashed:
the prohibited/unassigned/bidi checks look at the *mapped* characters before normalisation, and when
preparation fails (or the input is not valid UTF-8) the raw password bytes are used instead of an error
(``pg_be_scram_build_secret`` / libpq's ``pg_fe_scram_init``). :func:`prepare_password` gives that result;
:func:`saslprep` is the strict form that raises.

The code-point tables come from the standard library's :mod:`stringprep` (Unicode 3.2, as the RFC
requires); NFKC uses :mod:`unicodedata`'s current Unicode version, as PostgreSQL uses its own current one.
"""

from __future__ import annotations

import stringprep
import unicodedata

__all__ = ["SASLprepError", "prepare_password", "saslprep"]


class SASLprepError(ValueError):
    """The string cannot be prepared: prohibited character, bidi violation, empty after mapping."""


_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
)


def _map(text: str) -> str:
    """Step 1: non-ASCII spaces become a space, "commonly mapped to nothing" characters disappear."""
    out: list[str] = []
    for ch in text:
        if stringprep.in_table_c12(ch):
            out.append(" ")
        elif not stringprep.in_table_b1(ch):
            out.append(ch)
    return "".join(out)


def _check(mapped: str) -> None:
    """Steps 3 and 4 (prohibited output, unassigned code points, bidi), on the mapped characters."""
    for ch in mapped:
        if stringprep.in_table_a1(ch):
            raise SASLprepError(f"unassigned code point U+{ord(ch):04X}")
        for table in _PROHIBITED:
            if table(ch):
                raise SASLprepError(f"prohibited character U+{ord(ch):04X}")
    if any(stringprep.in_table_d1(ch) for ch in mapped):
        # RFC 3454 §6: with any RandALCat character there must be no LCat character, and the string must
        # start and end with a RandALCat character.
        if any(stringprep.in_table_d2(ch) for ch in mapped):
            raise SASLprepError("string mixes right-to-left and left-to-right characters")
        if not (stringprep.in_table_d1(mapped[0]) and stringprep.in_table_d1(mapped[-1])):
            raise SASLprepError("right-to-left string must start and end with a right-to-left character")


def saslprep(text: str) -> str:
    """Return the SASLprep form of ``text`` or raise :class:`SASLprepError` (strict, no fallback).

    ASCII input is returned unchanged, as PostgreSQL does (it skips all processing for ASCII).
    """
    if text.isascii():
        return text
    mapped = _map(text)
    if not mapped:
        raise SASLprepError("string is empty after mapping")
    _check(mapped)
    return unicodedata.normalize("NFKC", mapped)


def _raw_bytes(password: str) -> bytes:
    """The password's original bytes; ``surrogateescape`` recovers bytes that were not valid UTF-8."""
    try:
        return password.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return password.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return password.encode("utf-8", "surrogatepass")


def prepare_password(password: str) -> bytes:
    """The bytes PostgreSQL feeds to PBKDF2 for ``password``: SASLprep'd UTF-8, or raw bytes on failure."""
    if password.isascii():
        return password.encode("ascii")
    if any("\ud800" <= ch <= "\udfff" for ch in password):
        # Invalid UTF-8 in the source (kept as surrogates): PostgreSQL returns SASLPREP_INVALID_UTF8 and
        # falls back to the raw bytes.
        return _raw_bytes(password)
    try:
        return saslprep(password).encode("utf-8")
    except SASLprepError:
        return password.encode("utf-8")
