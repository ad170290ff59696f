"""The ruleset as data: schema, compile, desired state, transactions, diff, and the kernel's
JSON listing read back."""

__all__: list[str] = []
