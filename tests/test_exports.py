"""``chains``' public names: ``__all__``, the lazy export table and the type checker's imports agree.

``chains/__init__.py`` lists every public name three times (``__all__``, ``_EXPORTS`` for the
lazy ``__getattr__``, and the ``TYPE_CHECKING`` imports mypy and editors read); a name added to
one and not the others is a ``from chains import X`` that fails at run time or in the type check.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, runner_env

import chains

INIT = Path(chains.__file__)
LAZY_ONLY = {"__version__"}
"""Public, but computed in ``__getattr__`` rather than imported from a module."""


def _type_checking_imports() -> dict[str, str]:
    """Name → module of every ``from M import N`` under ``if TYPE_CHECKING:`` in ``chains/__init__.py``."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    blocks = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    assert len(blocks) == 1, "chains/__init__.py should have one `if TYPE_CHECKING:` block"
    imports: dict[str, str] = {}
    for node in blocks[0].body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                assert alias.asname is None, f"{alias.name} is imported under another name"
                imports[alias.name] = str(node.module)
    return imports


def _type_checking_annotations() -> set[str]:
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    block = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    return {
        node.target.id for node in block.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def test_all_has_no_duplicates() -> None:
    assert len(chains.__all__) == len(set(chains.__all__))


def test_every_lazily_exported_name_is_in_all() -> None:
    assert set(chains._EXPORTS) - set(chains.__all__) == set()


def test_every_name_in_all_is_exported() -> None:
    assert set(chains.__all__) - set(chains._EXPORTS) - LAZY_ONLY == set()


@pytest.mark.parametrize("name", chains.__all__)
def test_every_name_in_all_resolves(name: str) -> None:
    value = getattr(chains, name)
    assert value is not None
    if name in chains._EXPORTS:
        module = chains._EXPORTS[name]
        assert getattr(__import__(module, fromlist=[name]), name) is value


def test_the_type_checking_imports_match_the_export_table() -> None:
    assert _type_checking_imports() == chains._EXPORTS
    assert _type_checking_annotations() == LAZY_ONLY


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        chains.nope  # noqa: B018
    with pytest.raises(ImportError):
        exec("from chains import nope", {})


def test_star_import_gives_every_public_name_in_a_fresh_interpreter() -> None:
    code = (
        "from chains import *\nprint(' '.join(sorted(k for k in dir() if not k.startswith('_') or k == '__version__')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=runner_env(), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == sorted(chains.__all__)
