"""The prompt-file modules after issue 12's split: one helper for JSON paths, ``ChainInfo.prompts``,
and the names other code imports from ``chains.spec.prompt_spec`` still there."""

from __future__ import annotations

from pathlib import Path

import pytest

from chains.errors import json_path
from chains.spec import prompt_spec, prompts_library
from chains.spec.prompts_library import PromptLibrary
from chains.spec.registry import chain_info, list_chains


@pytest.mark.parametrize(
    "parts, root, expected",
    [
        (("messages", 1, "content"), "", "messages[1].content"),
        ((0, "a", 2), "", "[0].a[2]"),
        (("properties", "a"), "output.schema", "output.schema.properties.a"),
        ((), "output.schema", "output.schema"),
        (("items", 0), "$", "$.items[0]"),
        ((), "", ""),
        (("", "a"), "", "a"),  # an empty key shows as nothing, as pydantic paths always did
    ],
)
def test_json_path_spells_a_place_in_a_document(parts: tuple[str | int, ...], root: str, expected: str) -> None:
    assert json_path(parts, root=root) == expected


def test_chain_info_names_its_prompt_files(tmp_path: Path) -> None:
    (tmp_path / "echo.yaml").write_text(
        "name: echo\ndescription: Echo.\ninput_variables: [text]\nmessages:\n  - {role: human, content: '{text}'}\n"
    )
    library = PromptLibrary([tmp_path])
    assert chain_info("story", library).prompts == ("story_outline", "story")
    assert chain_info("summarize", library).prompts == ("summarize",)
    assert chain_info("echo", library).prompts == ("echo",)
    for info in list_chains(library):
        assert [library.label(p) for p in info.prompts] == list(info.sources)


def test_moved_names_are_still_importable_from_prompt_spec() -> None:
    for name in ("discover_specs", "load_spec", "packaged_prompts_dir", "resolve_spec_path"):
        assert name in prompt_spec.__all__
        assert getattr(prompt_spec, name) is getattr(prompts_library, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = prompt_spec.nope  # type: ignore[attr-defined]
