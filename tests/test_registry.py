"""The lazy registry behind methods and attacks: built-ins import on first use, entry points load and are
checked, unknown names are one-line errors listing the valid ones."""

from __future__ import annotations

import sys
import types

import pytest

from domainlock.errors import DomainlockError, UnknownChoiceError
from domainlock.utils.registry import LazyRegistry


class Base:
    name = "base"


class _EntryPoint:
    def __init__(self, value, obj):
        self.value, self._obj = value, obj

    def load(self):
        return self._obj


def test_builtins_import_on_first_use_and_entry_points_are_checked(monkeypatch):
    module = types.ModuleType("fake_builtin_entry")
    reg = LazyRegistry("widget", Base, {"alpha": "fake_builtin_entry"}, "fake.group")

    def define():   # what importing the built-in's module does: it registers itself
        class Alpha(Base):
            name = "alpha"
        reg.register(Alpha)

    monkeypatch.setitem(sys.modules, "fake_builtin_entry", module)
    monkeypatch.setattr("importlib.import_module", lambda name: define())

    class Beta(Base):
        name = "beta"

    monkeypatch.setattr(reg, "_entry_points", lambda: {"beta": _EntryPoint("pkg:Beta", Beta),
                                                       "gamma": _EntryPoint("pkg:gamma", object)})
    assert reg.names() == ["alpha", "beta", "gamma"]
    assert reg.get("alpha").name == "alpha" and reg.get("beta") is Beta
    with pytest.raises(DomainlockError, match="entry point 'pkg:gamma' for widget 'gamma' is not a Base subclass"):
        reg.get("gamma")
    with pytest.raises(UnknownChoiceError, match="unknown widget 'delta'; valid choices: alpha, beta, gamma"):
        reg.get("delta")
    reg.unregister("beta")
    assert reg.get("beta") is Beta   # entry points come back on their next use
