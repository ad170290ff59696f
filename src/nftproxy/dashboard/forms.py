"""The deploy form, made from a chart's values.schema.json: fields for strings, numbers,
integers, booleans, enums, nested objects and lists of scalars, their defaults from the
chart's values; the answers turned back into values and validated against the schema on
the server, each error named by its field. What a form cannot express is edited as YAML."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

__all__ = ["MAX_FIELDS", "Field", "coalesced", "fields", "validate", "values_from_form"]

MAX_FIELDS = 500  # a schema with more is edited as YAML
_SCALARS = ("string", "number", "integer", "boolean")


@dataclass(frozen=True, slots=True)
class Field:
    path: tuple[str, ...]
    kind: str  # string, number, integer, boolean, enum, list
    value: str  # as the input shows it ("true"/"false" for booleans, one item a line for lists)
    required: bool = False
    options: tuple[str, ...] = ()
    title: str = ""
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None

    @property
    def name(self) -> str:
        return ".".join(self.path)


def _kind(schema: Mapping[str, Any]) -> str | None:
    if "enum" in schema and all(isinstance(o, str | int | float | bool) for o in schema["enum"]):
        return "enum"
    kind = schema.get("type")
    if isinstance(kind, str) and kind in (*_SCALARS, "object"):
        return kind
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, Mapping) and items.get("type") in _SCALARS:
            return "list"
    return None


def _shown(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "boolean":
        return "true" if value is True else "false"
    if kind == "list":
        return "\n".join(str(v) for v in value) if isinstance(value, list) else ""
    return str(value)


def _number(schema: Mapping[str, Any], key: str) -> float | None:
    value = schema.get(key)  # an int stays an int: the form shows min="1", not "1.0"
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _walk(
    schema: Mapping[str, Any], values: Any, path: tuple[str, ...], required: bool
) -> Iterator[Field]:
    kind = _kind(schema)
    if kind == "object":
        props = schema.get("properties")
        wanted = set(schema.get("required") or ())
        here = values if isinstance(values, Mapping) else {}
        for key, sub in (props or {}).items():
            if isinstance(key, str) and isinstance(sub, Mapping):
                yield from _walk(sub, here.get(key), (*path, key), key in wanted)
        return
    if kind is None or not path:
        return  # not a form field: YAML only
    value = values if values is not None else schema.get("default")
    yield Field(
        path=path,
        kind=kind,
        value=_shown(value, kind),
        required=required,
        options=tuple(str(o) for o in schema.get("enum", ())) if kind == "enum" else (),
        title=str(schema.get("title", ""))[:200],
        description=str(schema.get("description", ""))[:1000],
        minimum=_number(schema, "minimum"),
        maximum=_number(schema, "maximum"),
        min_length=schema.get("minLength") if isinstance(schema.get("minLength"), int) else None,
        max_length=schema.get("maxLength") if isinstance(schema.get("maxLength"), int) else None,
        pattern=schema.get("pattern") if isinstance(schema.get("pattern"), str) else None,
    )


def coalesced(defaults: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The values a chart renders with, as helm makes them: the user's `values` over the
    chart's `defaults`, mappings merged key by key, anything else replaced, and a null
    removing the default."""
    out = copy.deepcopy(dict(defaults))
    for key, value in values.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = coalesced(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def fields(schema: Mapping[str, Any], values: Mapping[str, Any]) -> list[Field]:
    """The form's fields in schema order, filled with `values` (else the schema's defaults)."""
    found = []
    for f in _walk(schema, values, (), False):
        found.append(f)
        if len(found) > MAX_FIELDS:
            return []
    return found


def _parsed(f: Field, text: str, schema_enum: tuple[Any, ...]) -> Any:
    text = text.strip()
    if f.kind == "boolean":
        if text not in ("true", "false"):
            raise ValueError("true or false")
        return text == "true"
    if f.kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError("a whole number") from None
    if f.kind == "number":
        try:
            number = float(text)
        except ValueError:
            raise ValueError("a number") from None
        return int(number) if number.is_integer() and "." not in text else number
    if f.kind == "enum":
        for option in schema_enum:
            if str(option) == text:
                return option
        raise ValueError("one of the choices")
    if f.kind == "list":
        return [line.strip() for line in text.splitlines() if line.strip()]
    return text


def _schema_at(schema: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    for key in path:
        schema = schema.get("properties", {}).get(key, {})
    return schema


def values_from_form(
    schema: Mapping[str, Any],
    form: Mapping[str, str],
    base: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """`base` (the chart's values, or what the YAML editor holds) with the form's answers
    put in, and the answers that could not be read, by field name. A field left as the
    form showed it (`base` over the chart's `defaults`), or an empty optional one, is left
    as `base` has it."""
    values = copy.deepcopy(dict(base))
    errors: dict[str, str] = {}
    shown = coalesced(defaults, base) if defaults is not None else base
    for f in fields(schema, shown):
        if f.name not in form:
            continue
        text = form[f.name]
        if text == f.value:
            continue  # as `base` has it (or the schema's default): nothing to write
        if not text.strip() and f.kind not in ("boolean", "list"):
            if f.required:
                errors[f.name] = "required"
            continue
        sub = _schema_at(schema, f.path)
        try:
            parsed = _parsed(f, text, tuple(sub.get("enum", ())))
        except ValueError as exc:
            errors[f.name] = f"should be {exc}"
            continue
        here = values
        for key in f.path[:-1]:
            nxt = here.get(key)
            if not isinstance(nxt, dict):
                nxt = here[key] = {}
            here = nxt
        here[f.path[-1]] = parsed
    return values, errors


def validate(schema: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, str]:
    """Where `values` break the schema, by field name ("" for the whole document)."""
    try:
        checker_class = jsonschema.validators.validator_for(schema)
        checker_class.check_schema(dict(schema))
    except jsonschema.SchemaError as exc:
        return {"": f"the chart's values.schema.json is not a valid schema: {exc.message}"}
    checker = checker_class(schema)
    errors: dict[str, str] = {}
    for error in sorted(checker.iter_errors(dict(values)), key=lambda e: list(e.absolute_path)):
        name = ".".join(str(p) for p in error.absolute_path)
        errors.setdefault(name, error.message[:300])
    return errors
