"""One run of the suite: its options, its child environment and pinning, its failures and results.

Every scenario gets the ``Suite``: it logs through it, records failures through it (a failure
makes the exit status 1), and puts its results in ``results`` under the scenario's key.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import contenders as C
from processes import PY, RUNNER, Pinning, child_env, run_process


class Suite:
    """The state every scenario of one run shares."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.repeat: int = 1 if args.quick else args.repeat
        self.out = Path(args.out).resolve()
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = child_env(self.out, cache_bytecode=not self.quick)
        self.cores: list[int] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        """Every core this run may use, read before ``pin_self`` narrows this process (and its children) to one."""
        self.pinning = Pinning()
        self.pinning.pin_self()
        self.timeout = 120.0 if self.quick else 1800.0
        self.failures: list[str] = []
        self.results: dict[str, Any] = {}
        self.aiohttp = C.aiohttp_available()
        self.only = {int(x) for x in args.only.split(",")} if args.only else set(range(1, 10))

    # -- helpers

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def fail(self, text: str) -> None:
        self.failures.append(text)
        self.log(f"  FAILED: {text}")

    def python(self, *args: str) -> list[str]:
        return [*self.pinning.client(), PY, *args]

    def all_cores(self) -> list[str]:
        """A ``taskset`` prefix that gives a child every core again (this process is pinned to the server's, and a
        child inherits that); empty when nothing was pinned.  For children that must spread (Ray workers)."""
        taskset = shutil.which("taskset")
        if not (self.pinning.enabled and taskset and self.cores):
            return []
        return [taskset, "-c", ",".join(str(core) for core in self.cores)]

    def cores_text(self) -> str:
        return ",".join(str(core) for core in self.cores) or "all"

    def warm_up(self) -> None:
        """Compile and cache every module the children import (once per results directory)."""
        self.log("warming up the bytecode cache ...")
        code = (
            "import openai, httpx, aiohttp, langchain_openai, langchain_core.runnables, langchain_core.prompts;"
            "import chains.cli.commands, chains.engine.execution, chains.providers.models, chains.spec.registry, chains.providers.fake, chains.cli.console,"
            " chains.io.sinks, chains.io.inputs, chains.engine.resume, chains.providers.managed, chains.engine.callbacks, runner\n"
            "try:\n import httpx_aiohttp\nexcept ImportError: pass"
        )
        for argv in ([PY, "-c", code], [PY, str(RUNNER), "list"]):
            result = run_process(argv, env=self.env, timeout=600)
            if result.returncode != 0:
                self.fail(f"warm-up {argv[1:]} exited {result.returncode}: {result.stderr.strip()[-500:]}")
