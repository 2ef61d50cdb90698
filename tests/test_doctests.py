"""Runs the docstring examples of every vigie module (they document what numbers mean)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import vigie

SUBPACKAGES = ("vigie.schemas", "vigie.operators", "vigie.models", "vigie.streams", "vigie.sinks")


def _modules() -> list[str]:
    names = []
    for package_name in SUBPACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}."):
            names.append(info.name)
    names.append("vigie.localserver")  # shared by streams and sinks: in the root package
    return sorted(set(names))


def test_every_subpackage_is_under_vigie() -> None:
    assert all(name.startswith("vigie.") for name in _modules())
    assert vigie.__version__


@pytest.mark.parametrize("name", _modules())
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
