from senseflow.cli import _entry

_entry()
