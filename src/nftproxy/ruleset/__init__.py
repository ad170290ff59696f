"""Ruleset as data: schema, compile, desired state, diff."""
