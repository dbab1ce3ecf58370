"""Bounding user content for messages: reasons, reviewer text and file names of any length.

Pure. Cut in characters, not bytes, so Chinese text is cut between characters, never mangled.
"""

from __future__ import annotations

MAX_TEXT = 160


def shorten(text: str, limit: int = MAX_TEXT) -> str:
    """One line of at most `limit` characters, cut with an ellipsis."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"
