"""Why a job failed, as data and as words: the detail APIs' answers shaped for alerts.

Pure. `why` is a plain mapping kept in the event's details and the store (see
watcher.metastudio.details for the calls); `why_lines` says it in short lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from watcher.engine.shorten import MAX_TEXT, shorten


def why_lines(why: Any, limit: int = MAX_TEXT) -> list[str]:
    """The fetched failure detail as short lines (recordings, reviewer, reasons)."""
    if not isinstance(why, Mapping):
        return []
    if not why.get("available", True):
        return [f"detail unavailable: {shorten(str(why.get('problem') or 'unknown'), limit)}"]
    lines = []
    for error in why.get("errors") or []:
        name = error.get("audio_name") or error.get("text_name") or "recording"
        if error.get("audio_name") and error.get("text_name"):
            name = f"{error['audio_name']} ({error['text_name']})"
        code = error.get("error_code")
        text = " ".join(p for p in (code, error.get("error_message")) if p)
        lines.append(shorten(f"{name}: {text or 'rejected'}", limit))
    if why.get("reviewer_message"):
        lines.append(shorten(f"reviewer: {why['reviewer_message']}", limit))
    for reason in why.get("failure_reasons") or []:
        lines.append(shorten(f"reason: {reason}", limit))
    return lines
