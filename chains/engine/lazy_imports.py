"""Packages the program's own process (the CLI, a Ray worker) imports only when used (start-up time, issue 16).

``langsmith.run_trees``, which ``langchain_core.runnables`` imports, imports ``langsmith._internal
._v2_migration_utils`` for one enum, ``langsmith.types.run_select_field``; importing that submodule runs
``langsmith.types/__init__.py``, which imports the whole generated API (about 170 modules of pydantic models):
0.12–0.14 s of a 0.5 s start here, for types that a run without LangSmith never touches.

``defer(name)`` puts the package in ``sys.modules`` made from its own spec (its ``__path__``, so its submodules
import as usual) but with its ``__init__`` not yet run; the first attribute asked of it that is not there runs
it, in place, and answers.  ``from langsmith.types import Run``, ``langsmith.types.Run``, ``import *``: all see
the whole package, only later.  Nothing else changes: a package already imported, one that is missing, or one
whose spec is not a plain package is left alone, and any surprise leaves the import to Python.

Only the program's own process does this (``runner.main_entry``, a Ray worker's actor), never the library inside
someone's process.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from typing import Any

DEFERRED = ("langsmith.types",)


def defer_all() -> None:
    for name in DEFERRED:
        defer(name)


def defer(name: str) -> bool:
    """Import package ``name`` on its first use instead of now; False when it is left to Python."""
    if name in sys.modules:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    loader = getattr(spec, "loader", None)
    if spec is None or spec.submodule_search_locations is None or not hasattr(loader, "exec_module"):
        return False
    module = importlib.util.module_from_spec(spec)
    lock = threading.RLock()  # another thread asking meanwhile waits for the whole package
    state = {"loading": False, "loaded": False}

    def __getattr__(attr: str) -> Any:
        with lock:
            if not state["loaded"] and not state["loading"]:  # the package's own lookups while it loads: below
                state["loading"] = True
                try:
                    loader.exec_module(module)  # type: ignore[union-attr]
                except BaseException:
                    sys.modules.pop(name, None)  # as a failed import: the next one tries again, and fails alike
                    raise
                finally:
                    state["loading"] = False
                state["loaded"] = True
                if module.__dict__.get("__getattr__") is __getattr__:  # else the package's own replaced it
                    del module.__dict__["__getattr__"]
        try:
            return module.__dict__[attr]
        except KeyError:
            package_getattr = module.__dict__.get("__getattr__")
            if package_getattr is not None and package_getattr is not __getattr__:
                return package_getattr(attr)
            raise AttributeError(f"module {name!r} has no attribute {attr!r}") from None

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = module
    return True
