"""The deploy form made from a values schema (nftproxy.dashboard.forms): fields, answers
back into values, and the schema checked again on the server, errors named by field."""

from __future__ import annotations

from typing import Any

from nftproxy.dashboard.forms import fields, validate, values_from_form

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["replicas"],
    "properties": {
        "replicas": {"type": "integer", "minimum": 1, "maximum": 10, "title": "Replicas"},
        "image": {
            "type": "object",
            "properties": {
                "repository": {"type": "string", "minLength": 1},
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            },
        },
        "debug": {"type": "boolean"},
        "ratio": {"type": "number"},
        "hosts": {"type": "array", "items": {"type": "string"}},
        "resources": {"type": "object", "additionalProperties": True},
        "sidecars": {"type": "array", "items": {"type": "object"}},
    },
}
VALUES: dict[str, Any] = {
    "replicas": 2,
    "image": {"repository": "nginx", "pullPolicy": "IfNotPresent"},
    "debug": False,
    "hosts": ["a.example", "b.example"],
    "sidecars": [{"name": "x"}],
}


def test_fields_follow_the_schema_with_the_charts_values() -> None:
    found = {f.name: f for f in fields(SCHEMA, VALUES)}
    assert list(found) == [
        "replicas",
        "image.repository",
        "image.pullPolicy",
        "debug",
        "ratio",
        "hosts",
    ]
    assert (found["replicas"].kind, found["replicas"].value, found["replicas"].required) == (
        "integer",
        "2",
        True,
    )
    assert (found["replicas"].minimum, found["replicas"].maximum) == (1, 10)
    assert found["image.pullPolicy"].options == ("Always", "IfNotPresent", "Never")
    assert found["debug"].value == "false" and found["hosts"].value == "a.example\nb.example"
    assert found["ratio"].value == ""  # not in the values, no default


def test_answers_become_values_and_what_the_form_does_not_show_stays() -> None:
    form = {
        "replicas": "3",
        "image.repository": "httpd",
        "image.pullPolicy": "Always",
        "debug": "true",
        "ratio": "0.5",
        "hosts": "x.example\n\n y.example \n",
    }
    values, errors = values_from_form(SCHEMA, form, VALUES)
    assert errors == {}
    assert values["replicas"] == 3 and values["debug"] is True and values["ratio"] == 0.5
    assert values["image"] == {"repository": "httpd", "pullPolicy": "Always"}
    assert values["hosts"] == ["x.example", "y.example"]
    assert values["sidecars"] == [{"name": "x"}]  # YAML-only, untouched
    assert VALUES["replicas"] == 2  # the chart's values are not changed in place
    assert validate(SCHEMA, values) == {}


def test_unreadable_answers_are_named_by_field() -> None:
    form = {"replicas": "two", "ratio": "half", "image.pullPolicy": "Sometimes", "debug": "maybe"}
    _, errors = values_from_form(SCHEMA, form, VALUES)
    assert errors == {
        "replicas": "should be a whole number",
        "ratio": "should be a number",
        "image.pullPolicy": "should be one of the choices",
        "debug": "should be true or false",
    }
    _, errors = values_from_form(SCHEMA, {"replicas": " "}, VALUES)
    assert errors == {"replicas": "required"}


def test_the_server_checks_the_schema_again_and_names_each_field() -> None:
    bad = {**VALUES, "replicas": 11, "image": {"repository": "", "pullPolicy": "Sometimes"}}
    errors = validate(SCHEMA, bad)
    assert set(errors) == {"replicas", "image.repository", "image.pullPolicy"}
    assert "11 is greater than the maximum of 10" in errors["replicas"]
    missing = {k: v for k, v in VALUES.items() if k != "replicas"}
    assert "'replicas' is a required property" in validate(SCHEMA, missing)[""]


def test_a_broken_schema_is_reported_not_raised() -> None:
    errors = validate({"type": "no-such-type"}, {})
    assert list(errors) == [""] and "not a valid schema" in errors[""]
