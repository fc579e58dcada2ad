"""Prompt files shipped with chain-runner; installed as the ``chains.prompts`` package."""
