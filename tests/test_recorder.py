"""The recorders polling and delivery report to: `Metrics` (/metrics) and `Unrecorded` (`once`)."""

from __future__ import annotations

import inspect

import pytest

from watcher.metrics import Metrics
from watcher.recorder import ALERT_OUTCOMES, Recorder, Unrecorded


@pytest.mark.parametrize("recorder", [Metrics(process=False), Unrecorded()], ids=type)
def test_a_wrong_alert_outcome_is_refused_by_either_recorder(recorder: Recorder) -> None:
    for outcome in sorted(ALERT_OUTCOMES):
        recorder.alert("team", outcome)
    with pytest.raises(ValueError, match="must be one of sent, failed, dead \\(got 'lost'\\)"):
        recorder.alert("team", "lost")


def test_unrecorded_takes_every_report_as_metrics_does() -> None:
    """Same names, same parameters: a call written against one is a call the other takes."""
    members = [
        name
        for name, value in vars(Recorder).items()
        if callable(value) and not name.startswith("_")
    ]
    assert len(members) == 12
    for name in members:
        expected = inspect.signature(getattr(Recorder, name))
        assert inspect.signature(getattr(Metrics, name)) == expected, name
        assert inspect.signature(getattr(Unrecorded, name)) == expected, name
