"""Where prompt files are found: the packaged ``prompts/`` plus any user directories.

Loading is by name only, confined to these directories (no paths from
outside, no ``load_prompt``).  Specs are parsed once and cached.  The same
name in two directories is an error that names both files.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from chains.errors import PromptSpecError, UsageError
from chains.prompt_spec import PromptSpec, discover_specs, load_spec, packaged_prompts_dir


def _label_prefix(directory: Path) -> str:
    try:
        shown = os.path.relpath(directory)
    except ValueError:  # another drive on Windows
        shown = str(directory)
    if shown.startswith(".." + os.sep + ".."):
        shown = str(directory)
    return shown.rstrip(os.sep) + "/"


class PromptLibrary:
    """Prompt specs by name from an ordered list of directories."""

    def __init__(self, extra_dirs: Sequence[str | Path] = (), *, include_packaged: bool = True) -> None:
        self.dirs: list[tuple[Path, str]] = []
        if include_packaged:
            self.dirs.append((packaged_prompts_dir(), "prompts/"))
        for entry in extra_dirs:
            directory = Path(entry).expanduser()
            if not directory.is_dir():
                raise UsageError(
                    f"--prompts-dir {entry}: not a directory; pass a folder that holds <name>.yaml prompt files"
                )
            self.dirs.append((directory.resolve(), _label_prefix(directory)))
        self._paths: dict[str, tuple[Path, str]] | None = None
        self._specs: dict[str, PromptSpec] = {}

    def _index(self) -> dict[str, tuple[Path, str]]:
        if self._paths is None:
            found: dict[str, tuple[Path, str]] = {}
            for directory, prefix in self.dirs:
                for name, path in discover_specs(directory).items():
                    label = prefix + path.name
                    if name in found:
                        raise UsageError(
                            f"prompt {name!r} is defined twice: {found[name][1]} and {label}; "
                            "rename one of the files (and its name: field)"
                        )
                    found[name] = (path, label)
            self._paths = found
        return self._paths

    def names(self) -> list[str]:
        return sorted(self._index())

    def __contains__(self, name: object) -> bool:
        return name in self._index()

    def label(self, name: str) -> str:
        return self._index()[name][1]

    def spec(self, name: str) -> PromptSpec:
        """The validated spec called ``name`` (raises PromptSpecError if it is missing or invalid)."""
        if name not in self._specs:
            entry = self._index().get(name)
            if entry is None:
                raise PromptSpecError(f"prompts/{name}.yaml", "", "file not found; the chain needs this prompt file")
            path, label = entry
            self._specs[name] = load_spec(path, label)
        return self._specs[name]


@functools.lru_cache(maxsize=1)
def default_library() -> PromptLibrary:
    """The packaged prompts only (cached for the process)."""
    return PromptLibrary()
