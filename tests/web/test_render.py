"""watcher.web.render: whatever a job holds, the HTML shows it as text and the JSON as data."""

from __future__ import annotations

import json
import re
import urllib.parse
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import escape

from watcher.web import views
from watcher.web.readmodel import EventRow, JobRow
from watcher.web.render import STATIC, render_html, render_json

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TEXT = st.text(alphabet=st.sampled_from("<>&\"'/ =scriptimgonerrabc()`"), min_size=1, max_size=30)


def page(voice: str, reason: str) -> str:
    job = JobRow("prod", "j1", "FAILED", 1, None, NOW, voice, None, voice, "MSS.1", reason, None)
    event = EventRow(1, "transition", "prod", "j1", "AUDITING", "FAILED", reason, voice, NOW, None)
    view = views.job_view(job, "prod", "j1", [event], [], NOW)
    return render_html("job.html", view=view, now_text="", refresh_seconds=5, page="job")


@settings(max_examples=60, deadline=None)
@given(TEXT, TEXT)
def test_any_text_renders_escaped(voice: str, reason: str) -> None:
    # Fenced by markers, each value's every appearance is exactly its escaped form.
    html = page(f"VQX{voice}XQV", f"RQX{reason}XQR")
    voices = re.findall(r"VQX(.*?)XQV", html, re.S)
    reasons = re.findall(r"RQX(.*?)XQR", html, re.S)
    assert voices and reasons
    assert set(voices) <= {str(escape(voice)), urllib.parse.quote_plus(voice)}
    assert set(reasons) == {str(escape(reason))}


@settings(max_examples=60, deadline=None)
@given(TEXT)
def test_json_keeps_the_value_but_never_its_markup(value: str) -> None:
    text = render_json({"voice_name": value})
    assert json.loads(text) == {"voice_name": value}
    assert "<" not in text and ">" not in text and "&" not in text


def test_static_assets_ship_in_the_package() -> None:
    assert set(STATIC) == {"app.css", "app.js", "icon.svg"}
    assert all(body for body, _ in STATIC.values())
    assert b"http" not in STATIC["app.css"][0]  # no external font or image
