"""``runner.py story|run … --dry-run``: what the run would send and cost per tier, with nothing sent."""

from __future__ import annotations

from typing import Any

from chains.cli.commands import EXIT_OK
from chains.settings import RunSettings


async def dry_run_command(settings: RunSettings, library: Any, info: Any, inputs: Any) -> int:
    """Every input up to its first model call (``chains.providers.dry_run``); the report on stdout."""
    from chains.engine.pricing import PriceTable
    from chains.providers.dry_run import estimate
    from chains.providers.models import builtin_prices_apply, resolve_model_spec
    from chains.spec.registry import get_chain

    spec, _notice = resolve_model_spec(settings)
    prices = PriceTable.load(settings.prices, builtin=builtin_prices_apply(spec, settings.base_url))
    report = await estimate(
        lambda model: get_chain(info.name, model, library=library),
        inputs,
        model_name=spec.name,
        prices=prices,
        overrides=settings.model_overrides(),
    )
    for line in report.lines():
        print(line)
    return EXIT_OK
