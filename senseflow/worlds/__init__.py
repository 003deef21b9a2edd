"""Small worlds that run the whole method without downloads. `digits` is the embedded default.

Names are resolved lazily so that importing one world (e.g. senseflow.worlds.gmm) does not import another.
"""

from __future__ import annotations

_LAZY = {"DigitsWorld": "senseflow.worlds.digits", "DigitsWorldConfig": "senseflow.worlds.digits",
         "build_world": "senseflow.worlds.digits"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'senseflow.worlds' has no attribute {name!r}")
