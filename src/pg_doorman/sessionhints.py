"""Cheap signs in a statement's text that it may change session state that no command tag reveals.

PostgreSQL tells a pooler about SET (CommandComplete "SET") but not about ``set_config(...)`` or advisory locks,
which are function calls inside a SELECT, nor about a temporary table made by ``CREATE TEMP TABLE ... AS`` or
``SELECT ... INTO TEMP`` (their tag is "SELECT n"). The client's forwarding loop looks for their names in every
Query (and Parse) it passes on; a hit makes the server read its session settings back at the end of the transaction
(set_config) or check for leftovers before it is lent again (advisory locks, temporary objects; "temp" also
matches words like "template", which only costs that check). A miss costs a few byte searches.

Best effort by nature: the names are found in any letter case as written in the statement, and not when a
function the statement calls does the same thing inside.

This file is the pure-Python implementation. The compiled build never imports it: the `.pxd` next to it holds a
C version (memchr for a rare letter of each word, no Python objects), which the compiled client module cimports
under the same name.
"""

from __future__ import annotations

from pg_doorman import codes


def session_hints(data: bytes, start: int, end: int) -> int:
    """codes.HINT_* bits for the statement text in data[start:end] (ASCII letters in any case)."""
    text = data[start:end].lower()
    hints = 0
    if b"_config" in text:
        hints |= codes.HINT_SET_CONFIG
    if b"advisory" in text:
        hints |= codes.HINT_ADVISORY
    if b"temp" in text:
        hints |= codes.HINT_TEMP
    return hints
