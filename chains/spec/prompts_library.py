"""Where prompt files are found: the packaged ``prompts/`` plus any user directories.

Loading is by name only, confined to these directories (no paths from
outside, no ``load_prompt``): a name must match ``NAME_RULE``, and a file
whose real path (symlinks resolved) leaves its directory is skipped when
files are listed and refused when it is asked for by name.  A file is read
without blocking (a FIFO or a device cannot hang it) and at most
``MAX_FILE_BYTES`` of it, then parsed by ``prompt_spec.parse_spec``.  Specs
are parsed once and cached.  The same name in two directories is an error
that names both files.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

from chains.errors import PromptSpecError, UsageError
from chains.spec.prompt_spec import MAX_FILE_BYTES, NAME_RULE, PromptSpec, file_too_big, parse_spec

__all__ = [
    "PromptLibrary",
    "default_library",
    "discover_specs",
    "load_spec",
    "packaged_prompts_dir",
    "resolve_spec_path",
]

_NAME_RE = re.compile(NAME_RULE)


# ------------------------------------------------------------------ one file


def _read_bounded(path: Path, shown: str) -> bytes:
    """The file's bytes, refusing before reading one that is over ``MAX_FILE_BYTES``.

    Opened without blocking and checked to be a regular file, so a FIFO or a
    device cannot hang the read; read at most one byte past the limit, so a file
    that grows meanwhile cannot either.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise PromptSpecError(shown, "", "not a regular file; a prompt file must be a plain .yaml file")
        if status.st_size > MAX_FILE_BYTES:
            raise file_too_big(shown, status.st_size)
        raw = file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise file_too_big(shown, len(raw), over=True)
    return raw


def load_spec(path: Path, label: str | None = None) -> PromptSpec:
    """Load and validate one prompt file; ``label`` (default: the path) names it in errors."""
    shown = label if label is not None else str(path)
    try:
        raw = _read_bounded(path, shown)
    except FileNotFoundError:
        raise PromptSpecError(shown, "", "file not found") from None
    except OSError as exc:
        raise PromptSpecError(shown, "", f"cannot read file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptSpecError(shown, "", f"not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    # Strict UTF-8 decoding round-trips, so the digest equals sha256(raw).
    return parse_spec(text, shown, path.stem)


# ------------------------------------------------------------------ directories


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


def resolve_spec_path(directory: Path, name: str, label_prefix: str) -> Path:
    """Path of prompt ``name`` inside ``directory``, refusing anything that escapes it.

    ``name`` must match ``[a-z][a-z0-9_]*`` (so no separators, dots or ``..``),
    and the file (symlinks resolved) must stay inside ``directory``.  The file
    need not exist; check ``.is_file()``.  ``label_prefix`` (e.g. ``prompts``)
    names the directory in errors.
    """
    prefix = label_prefix.rstrip("/")
    if not _NAME_RE.fullmatch(name):
        raise PromptSpecError(
            prefix or str(directory),
            "name",
            f"{name!r} is not a valid prompt name; names must match {NAME_RULE} "
            "(lowercase letters, digits and underscores, starting with a letter)",
        )
    path = directory / f"{name}.yaml"
    if not _inside(path, directory):
        raise PromptSpecError(
            f"{prefix}/{name}.yaml" if prefix else str(path),
            "",
            "resolves outside the prompt directory (symlink?); prompt files must live inside it",
        )
    return path


def discover_specs(directory: Path) -> dict[str, Path]:
    """``{name: path}`` for the ``*.yaml`` prompt files directly in ``directory``, sorted.

    Files whose stem is not a valid name (e.g. ``__init__``) and symlinks
    pointing outside the directory are skipped.  Files are not parsed.
    """
    if not directory.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        if _NAME_RE.fullmatch(path.stem) and path.is_file() and _inside(path, directory):
            found[path.stem] = path
    return found


def packaged_prompts_dir() -> Path:
    """Directory of the prompt files shipped as the ``chains.prompts`` package."""
    try:
        root = importlib.resources.files("chains.prompts")
    except ModuleNotFoundError:
        # Running from a source checkout that is not installed: prompts/ sits
        # next to chains/ (pyproject maps it to chains.prompts when installed).
        return Path(__file__).resolve().parent.parent / "prompts"
    if isinstance(root, Path):
        return root
    return Path(str(root))


# ------------------------------------------------------------------ the library


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
