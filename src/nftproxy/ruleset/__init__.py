"""Ruleset as data: schema, compile, desired state, diff."""

__all__: list[str] = []
