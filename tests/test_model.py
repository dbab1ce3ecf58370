"""ExtraFields: a job's other fields in a compact form that reads as the dict it came from."""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher import model
from watcher.model import NO_EXTRA_FIELDS, ExtraFields, Job

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
fields = st.dictionaries(st.text(max_size=8), json_values, max_size=12)


@given(fields)
def test_extra_fields_read_exactly_as_the_dict_they_were_built_from(d: dict[str, Any]) -> None:
    extra = ExtraFields.of(d)

    assert extra == d and d == extra  # both ways round: Job equality compares either side
    assert (extra != d) is False and (d != extra) is False
    assert dict(extra) == d and extra.as_dict() == d
    assert list(extra) == list(d) and list(extra.items()) == list(d.items())  # API order
    assert len(extra) == len(d) and bool(extra) == bool(d)
    for key, value in d.items():
        assert key in extra and extra[key] == value and extra.get(key) == value
    assert "\x00absent" not in extra and extra.get("\x00absent") is None
    with pytest.raises(KeyError):
        extra["\x00absent"]
    assert repr(extra) == repr(d)


@given(fields, fields)
def test_extra_fields_are_equal_exactly_when_their_dicts_are(
    a: dict[str, Any], b: dict[str, Any]
) -> None:
    assert (ExtraFields.of(a) == ExtraFields.of(b)) is (a == b)
    assert (ExtraFields.of(a) == b) is (a == b)


def test_jobs_of_one_shape_share_one_tuple_of_names() -> None:
    first = ExtraFields({"sex": "FEMALE", "language": "CN", "tag": "LIVE"})
    second = ExtraFields({"sex": "MALE", "language": "EN", "tag": "LIVE"})

    assert first._keys is second._keys
    # Smaller than the dict it stands for (the point of it): names shared, values in a tuple.
    many = {f"field_{n}": n for n in range(11)}
    compact = ExtraFields(many)
    assert sys.getsizeof(compact) + sys.getsizeof(compact._values) < sys.getsizeof(many) / 2


def test_the_shared_names_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "_SHAPES", {})
    monkeypatch.setattr(model, "_MAX_SHAPES", 3)
    for n in range(10):
        assert ExtraFields({f"new_{n}": n}) == {f"new_{n}": n}  # past the bound: still right

    assert len(model._SHAPES) == 3


def test_empty_and_existing_extra_fields_are_not_rebuilt() -> None:
    extra = ExtraFields({"a": 1})

    assert ExtraFields.of({}) is NO_EXTRA_FIELDS and not NO_EXTRA_FIELDS
    assert ExtraFields.of(extra) is extra


# Values that are equal across types (1, 1.0, True; 0, 0.0, False) as well as strings.
scalars = st.none() | st.booleans() | st.sampled_from([0, 1, 0.0, 1.0, "1", "CN", ""])
flat_fields = st.dictionaries(
    st.sampled_from(["sex", "tag", "n"]), scalars | st.lists(scalars, max_size=2), max_size=3
)


@settings(max_examples=300)
@given(st.lists(flat_fields, min_size=1, max_size=12))
def test_shared_extra_fields_keep_each_jobs_own_values_down_to_their_type(
    many: list[dict[str, Any]],
) -> None:
    with (
        mock.patch.object(model, "_SHARED", {}),
        mock.patch.object(model, "_MAX_SHARED", 65536),
        mock.patch.object(model, "_shared_hits", 0),
    ):
        made = [ExtraFields.of(d) for d in many]
        for d, extra in zip(many, made, strict=True):
            # JSON tells 1 from 1.0 and true: what the store writes is what the API sent.
            assert json.dumps(extra.as_dict()) == json.dumps(d)
            again = ExtraFields.of(dict(d))
            if d and all(type(v) is str for v in d.values()):
                assert again is extra  # one instance per combination of strings
            else:
                assert json.dumps(again.as_dict()) == json.dumps(d)


def test_values_equal_across_types_are_never_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "_SHARED", {})
    monkeypatch.setattr(model, "_MAX_SHARED", 65536)
    for value in (1, True, 1.0, "1", 0, False, 0.0, 1, True):  # 1 == True == 1.0 as keys
        assert json.dumps(ExtraFields.of({"n": value}).as_dict()) == json.dumps({"n": value})


def test_jobs_with_the_same_string_values_share_one_instance_and_it_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(model, "_SHARED", {})
    monkeypatch.setattr(model, "_MAX_SHARED", 2)
    monkeypatch.setattr(model, "_shared_hits", 0)
    first = ExtraFields.of({"sex": "FEMALE", "tag": "LIVE"})

    for _ in range(3):
        assert ExtraFields.of({"sex": "FEMALE", "tag": "LIVE"}) is first
    assert ExtraFields.of({"tag": "LIVE", "sex": "FEMALE"}) is not first  # another order
    resource = {"resource": {"id": "r1"}}
    assert ExtraFields.of(resource) == resource  # unhashable: the job's own, not shared
    for n in range(5):
        assert ExtraFields.of({"user": f"u{n}"}) == {"user": f"u{n}"}  # past the bound
    assert len(model._SHARED) == 2  # full, and it has served more jobs than it holds: kept
    assert ExtraFields.of({"sex": "FEMALE", "tag": "LIVE"}) is first


def test_a_table_of_values_that_never_repeat_is_let_go(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model, "_SHARED", {})
    monkeypatch.setattr(model, "_MAX_SHARED", 3)
    monkeypatch.setattr(model, "_shared_hits", 0)
    for n in range(10):  # a field unique to each job: nothing to share
        assert ExtraFields.of({"linked": f"job-{n}"}) == {"linked": f"job-{n}"}

    assert model._SHARED == {} and model._MAX_SHARED == 0
    again = ExtraFields.of({"linked": "job-1"})
    assert again == {"linked": "job-1"} and ExtraFields.of({"linked": "job-1"}) is not again


def test_a_job_with_extra_fields_equals_one_built_with_a_dict() -> None:
    d = {"sex": "FEMALE", "tag": "LIVE"}
    compact = Job(job_id="j", state="SUCCEED", extra=ExtraFields(d))
    plain = Job(job_id="j", state="SUCCEED", extra=dict(d))

    assert compact == plain
    assert compact.field_value("tag") == "LIVE" and compact.field_value("absent") is None
    assert compact.as_dict() == plain.as_dict()
    assert compact != Job(job_id="j", state="SUCCEED", extra={"sex": "MALE", "tag": "LIVE"})


# --- Job's own __init__ ----------------------------------------------------------------


def test_jobs_init_takes_every_field_by_name_in_order_with_its_default() -> None:
    # Job's __init__ is written out (for speed): it must stay the one dataclass would write.
    params = list(inspect.signature(Job.__init__).parameters.values())[1:]
    declared = dataclasses.fields(Job)
    assert [p.name for p in params] == [f.name for f in declared]
    for param, f in zip(params, declared, strict=True):
        if f.default is not dataclasses.MISSING:
            assert param.default == f.default, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert param.default is None and getattr(Job("j", "S"), f.name) == f.default_factory()
        else:
            assert param.default is inspect.Parameter.empty, f.name


def test_jobs_init_sets_each_field_to_its_own_value_and_the_job_stays_frozen() -> None:
    values = {f.name: object() for f in dataclasses.fields(Job)}
    built = Job(**values)  # type: ignore[arg-type]
    assert {name: getattr(built, name) for name in values} == values
    positional = Job(*values.values())  # type: ignore[arg-type]
    assert all(getattr(positional, name) is value for name, value in values.items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.state = "FAILED"  # type: ignore[misc]
    changed = dataclasses.replace(Job("j", "AUDITING", digest=5), state="FAILED")
    assert (changed.job_id, changed.state, changed.digest) == ("j", "FAILED", 5)
