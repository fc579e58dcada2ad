"""The CLI's part of the price tiers: what ``--tier batch`` needs from the other flags, what a stopped batch
run says, and ``--dry-run`` (the library halves: ``chains.providers.batch``, ``chains.providers.dry_run``)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from chains.errors import UsageError
from chains.settings import RunSettings

if TYPE_CHECKING:
    from chains.cli.commands import RunOptions


def check_tier_flags(options: RunOptions, settings: RunSettings) -> None:
    """Before anything is read or sent: the flags a tier needs, and those that mean nothing for it."""
    batch = settings.tier == "batch"
    if batch and not options.output and not options.dry_run:
        raise UsageError(
            "--tier batch needs --output FILE.jsonl: the submitted batches are journaled beside it, so that a "
            "stopped run resumes (--resume) without paying for any request twice"
        )
    if options.cancel_on_interrupt and not batch:
        raise UsageError("--cancel-on-interrupt cancels the provider's batches: it needs --tier batch")
    if settings.flex_fallback and settings.tier != "flex":
        raise UsageError("--flex-fallback sends at the standard tier what the flex tier refuses: it needs --tier flex")
    if batch and options.stream:
        raise UsageError("--tier batch answers each request whole, after the batch: drop --stream (or use --tier flex)")


def left_running(batch_ids: list[str], output: str | None) -> None:
    """A stopped batch run leaves its batches running at the provider: say so, and how to collect them."""
    if not batch_ids:
        return
    shown = ", ".join(batch_ids[:3]) + (f" and {len(batch_ids) - 3} more" if len(batch_ids) > 3 else "")
    print(
        f"{len(batch_ids)} batch(es) still running at the provider ({shown}): run again with --resume "
        f"--output {output} to collect them without paying twice, or pass --cancel-on-interrupt to cancel "
        "them on Ctrl-C",
        file=sys.stderr,
    )
