"""The `retention` key: how long history is kept, validated with FILE:LINE errors."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.test_config import ENV, SRC
from watcher.config import load_config_text
from watcher.errors import ConfigError


def test_retention_defaults_to_30_days() -> None:
    assert load_config_text(SRC, "w.yaml", ENV).retention == timedelta(days=30)


def test_retention_is_a_duration() -> None:
    config = load_config_text(SRC + "retention: 7d\n", "w.yaml", ENV)
    assert config.retention == timedelta(days=7)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("soon", "expected a duration like 30s, 5m, 1h (got 'soon')"),
        ("10m", "must be at least 3600s"),
        ("0s", "must be at least 3600s"),
    ],
)
def test_bad_retention_names_file_line_and_key(value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(SRC + f"retention: {value}\n", "w.yaml", ENV)
    assert str(info.value) == f"w.yaml:5: retention: {problem}"
