"""Config comparison helpers shared by the config tests: nested mappings as {key path: leaf value}."""

from __future__ import annotations


def flatten(node, prefix=()):
    """Nested config -> {key path tuple: leaf value}; lists are leaves (they are replaced, not merged)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flatten(value, (*prefix, key)))
        return out
    return {prefix: node}


def config_diff(a, b):
    """Key paths whose values differ (or exist on one side only)."""
    fa, fb = flatten(a), flatten(b)
    return sorted(path for path in set(fa) | set(fb) if fa.get(path, "<missing>") != fb.get(path, "<missing>"))
