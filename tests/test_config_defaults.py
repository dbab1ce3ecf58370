"""watcher.config states no default of its own where the model has one: a file that leaves
every optional key out loads to exactly the defaults the model dataclasses declare.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from watcher.config import load_config_text
from watcher.config.channels import CHANNEL_KEYS
from watcher.config.reader import model_default
from watcher.config.rules import RULE_KEYS
from watcher.config.schema import DELIVERY_KEYS, TOP_KEYS
from watcher.config.sources import SOURCE_KEYS
from watcher.errors import ConfigError
from watcher.model import (
    ChannelPolicy,
    Config,
    DeliveryConfig,
    QuietHours,
    RuleConfig,
    SourceConfig,
)

ENV = {"CLOUD_SDK_AK": "AKFROMENV", "CLOUD_SDK_SK": "SKFROMENV"}
MINIMAL = """\
sources:
  - name: prod
    region: cn-north-4
    project_id: p1
channels:
  ops: json://localhost/hook
  quiet:
    urls: json://localhost/other
    quiet_hours: "22:00-07:00"
  plain:
    urls: json://localhost/third
rules:
  - name: r
    notify: ops
"""
# YAML keys whose field in the model is named differently (Python keywords, inverted sense).
RULE_FIELD_OF_KEY = {"from": "from_states", "continue": "stop", "for": "for_"}


def declared_defaults(model: type[Any]) -> dict[str, object]:
    """Every field of `model` that has a default, with that default."""
    out: dict[str, object] = {}
    for spec in dataclasses.fields(model):
        if spec.default is not dataclasses.MISSING:
            out[spec.name] = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            out[spec.name] = spec.default_factory()
    return out


def loaded(model: object, names: set[str]) -> dict[str, object]:
    return {name: getattr(model, name) for name in names}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config_text(MINIMAL, str(tmp_path / "config.yaml"), ENV)


def test_a_source_without_optional_keys_has_sourceconfigs_defaults(config: Config) -> None:
    defaults = declared_defaults(SourceConfig)
    assert len(defaults) >= 10  # the model really declares them (a guard on this test)
    assert loaded(config.sources[0], set(defaults)) == defaults


def test_a_rule_without_optional_keys_has_ruleconfigs_defaults(config: Config) -> None:
    defaults = declared_defaults(RuleConfig)
    assert len(defaults) >= 15
    assert loaded(config.rules[0], set(defaults)) == defaults
    assert config.rules[0].on == ("*",)  # `on` is required in the model: the reader's default


def test_the_top_level_without_optional_keys_has_configs_defaults(config: Config) -> None:
    # channel_policies, lines and secrets are always filled in by the reader, not defaults.
    defaults = declared_defaults(Config)
    for derived in ("channel_policies", "lines", "secrets"):
        del defaults[derived]
    assert loaded(config, set(defaults)) == defaults
    assert config.delivery == DeliveryConfig()


def test_long_form_channels_without_optional_keys_have_the_policy_defaults(
    config: Config,
) -> None:
    assert config.channel_policies["plain"] == ChannelPolicy()
    quiet = config.channel_policies["quiet"].quiet_hours
    assert quiet is not None
    assert quiet.timezone == declared_defaults(QuietHours)["timezone"] == "UTC"
    assert (
        config.channel_policies["quiet"].max_per_minute
        == declared_defaults(ChannelPolicy)["max_per_minute"]
    )


def test_a_given_key_overrides_the_default(tmp_path: Path) -> None:
    text = MINIMAL.replace("    project_id: p1\n", "    project_id: p1\n    poll_interval: 2m\n")
    config = load_config_text(text, str(tmp_path / "config.yaml"), ENV)
    assert config.sources[0].poll_interval == timedelta(minutes=2)
    assert model_default(SourceConfig, "poll_interval") == timedelta(seconds=60)


def test_full_scan_every_is_checked_against_the_models_default_poll_interval(
    tmp_path: Path,
) -> None:
    """No poll_interval in the file: full_scan_every compares with SourceConfig's default."""
    default = model_default(SourceConfig, "poll_interval")
    ok = MINIMAL.replace(
        "    project_id: p1\n",
        f"    project_id: p1\n    full_scan_every: {int(default.total_seconds())}s\n",
    )
    config = load_config_text(ok, str(tmp_path / "config.yaml"), ENV)
    assert config.sources[0].full_scan_every == default
    short = ok.replace(f"full_scan_every: {int(default.total_seconds())}s", "full_scan_every: 59s")
    with pytest.raises(ConfigError, match=r"at least poll_interval \(60s\)"):
        load_config_text(short, str(tmp_path / "config.yaml"), ENV)


def test_model_default_refuses_a_field_without_default() -> None:
    with pytest.raises(LookupError, match=r"SourceConfig\.name has no default"):
        model_default(SourceConfig, "name")


def test_every_optional_model_field_has_a_yaml_key() -> None:
    """The key tuples and the models cannot drift apart: each default can be overridden."""
    assert set(declared_defaults(SourceConfig)) <= set(SOURCE_KEYS)
    rule_fields = {RULE_FIELD_OF_KEY.get(key, key) for key in RULE_KEYS}
    assert set(declared_defaults(RuleConfig)) <= rule_fields
    assert set(DELIVERY_KEYS) == {spec.name for spec in dataclasses.fields(DeliveryConfig)}
    assert set(declared_defaults(ChannelPolicy)) <= set(CHANNEL_KEYS)
    assert set(declared_defaults(QuietHours)) <= set(CHANNEL_KEYS)
    top_fields = {"first_run", "delivery", "retention", "http_listen", "http_auth"}
    assert top_fields <= set(declared_defaults(Config))
    assert {"first_run", "delivery", "retention", "http"} <= set(TOP_KEYS)
