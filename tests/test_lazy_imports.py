"""A deferred package runs its ``__init__`` at its first use, and is then the package it always was."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _package(tmp_path: Path, init: str) -> Path:
    pkg = tmp_path / "heavy"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(init))
    (pkg / "light.py").write_text("WORD = 'light'\n")
    return tmp_path


def _run(where: Path, code: str) -> list[str]:
    script = f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(where)!r}]\n" + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


_INIT = """
    import builtins
    builtins.RAN = getattr(builtins, "RAN", 0) + 1
    from .light import WORD as WORD
    Big = "the whole API"
    __all__ = ["Big", "WORD"]
"""


def test_a_submodule_imports_without_the_package_init_which_runs_at_the_first_use(tmp_path: Path) -> None:
    where = _package(tmp_path, _INIT)
    out = _run(
        where,
        """
        import builtins
        from chains.engine.lazy_imports import defer
        print(defer("heavy"))
        from heavy.light import WORD            # langsmith's one enum: the package's __init__ does not run
        print(WORD, getattr(builtins, "RAN", 0))
        from heavy import Big                   # the first use runs it, once
        import heavy
        print(Big.replace(" ", "_"), heavy.WORD, builtins.RAN)
        ns = {}
        exec("from heavy import *", ns)
        print(sorted(k for k in ns if not k.startswith("__")), builtins.RAN, heavy.__name__, heavy.light.WORD)
        """,
    )
    assert out == ["True", "light", "0", "the_whole_API", "light", "1", "['Big',", "'WORD']", "1", "heavy", "light"]


def test_a_missing_name_is_an_attribute_error_and_a_failing_init_fails_each_import_alike(tmp_path: Path) -> None:
    where = _package(tmp_path, "raise RuntimeError('broken package')\n")
    out = _run(
        where,
        """
        import sys
        from chains.engine.lazy_imports import defer
        defer("heavy")
        for _ in range(2):
            try:
                import heavy
                heavy.anything
            except RuntimeError as exc:
                print(type(exc).__name__, "heavy" in sys.modules)
        """,
    )
    assert out == ["RuntimeError", "False", "RuntimeError", "False"]
    (tmp_path / "fine").mkdir()
    fine = _package(tmp_path / "fine", _INIT)
    out = _run(
        fine,
        """
        from chains.engine.lazy_imports import defer
        defer("heavy")
        import heavy
        try:
            heavy.nothing_here
        except AttributeError as exc:
            print("AttributeError", "nothing_here" in str(exc))
        """,
    )
    assert out == ["AttributeError", "True"]


def test_what_is_imported_already_missing_or_not_a_package_is_left_to_python(tmp_path: Path) -> None:
    where = _package(tmp_path, _INIT)
    out = _run(
        where,
        """
        import json, heavy.light
        from chains.engine.lazy_imports import defer
        print(defer("json"), defer("heavy"), defer("no_such_package_here"), defer("heavy.light.x"))
        import importlib.util
        """,
    )
    assert out == ["False", "False", "False", "False"]


def test_the_cli_run_never_loads_langsmiths_generated_types(tmp_path: Path) -> None:
    """The run's whole path (prompt file → chain → the offline model → a record): ``langsmith.types`` stays
    deferred, and is the real package when asked for."""
    out = _run(
        ROOT,
        """
        import sys, runner
        runner.own_process()
        code = runner.main(["story", "--topics", "examples/topics.txt", "-q", "--output", OUT])
        types = sys.modules["langsmith.types"]
        print(code, "Run" in types.__dict__)
        from langsmith.types import Run
        print(Run.__name__, "Run" in types.__dict__)
        """.replace("OUT", repr(str(tmp_path / "out.jsonl"))),
    )
    assert out == ["0", "False", "Run", "True"]


def test_threads_asking_at_once_get_the_whole_package_loaded_once(tmp_path: Path) -> None:
    slow_init = _INIT.replace("Big = ", "import time; time.sleep(0.2)\n    Big = ")
    where = _package(tmp_path, slow_init)
    out = _run(
        where,
        """
        import builtins, threading
        from chains.engine.lazy_imports import defer
        defer("heavy")
        got = []
        def ask():
            from heavy import Big
            got.append(Big)
        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(len(got), len(set(got)), builtins.RAN)
        """,
    )
    assert out == ["4", "1", "1"]


def test_a_package_with_its_own_module_getattr_answers_with_it_once_loaded(tmp_path: Path) -> None:
    where = _package(tmp_path, textwrap.dedent(_INIT) + "\ndef __getattr__(attr):\n    return 'lazy ' + attr\n")
    out = _run(
        where,
        """
        from chains.engine.lazy_imports import defer
        defer("heavy")
        import heavy
        print(heavy.anything.replace(" ", "_"), heavy.Big.replace(" ", "_"), heavy.other.replace(" ", "_"))
        """,
    )
    assert out == ["lazy_anything", "the_whole_API", "lazy_other"]


def test_the_quick_commands_import_no_langchain_langsmith_or_http_client() -> None:
    """``--help``, ``list`` and ``show`` stay quick (issue 16: ≤ 0.3 s): none of them imports LangChain, LangSmith's
    client, an HTTP client or the SDK (the program's own start-up included: ``own_process``, ``finish``, which
    once asked LangSmith whether tracing was on for any ``import langsmith``: 0.3 s more for ``--help``)."""
    heavy = ("langchain_core", "langchain_openai", "openai", "aiohttp", "httpx", "httpx2", "requests", "langsmith.")
    for command in (["--help"], ["list"], ["show", "story"]):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", str(ROOT / "runner.py"), *command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
        found = [m for m in imported if m.startswith(heavy) and m != "langsmith._version"]  # the bare package: ok
        assert not found, (command, found)
