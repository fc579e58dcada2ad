#!/usr/bin/env python
"""chain-runner's command line: parses arguments, calls the library, maps errors to exit codes.

    python runner.py story --topics examples/topics.txt
    python runner.py run summarize --input texts.jsonl --output out.jsonl
    python runner.py list | show CHAIN
    python runner.py merge all.jsonl shard0.jsonl shard1.jsonl
    chain-runner --version                  # the console script: the same program

Only this file calls ``asyncio.run``; everything else is async library code.  Messages name
the program as it was called (``runner.py`` or ``chain-runner``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from chains.cli.process import discard_stdout, finish, own_process

__all__ = ["build_parser", "finish", "main", "main_entry", "own_process", "run_options"]

if TYPE_CHECKING:
    from chains.cli.commands import RunOptions
    from chains.settings import RunSettings

EXIT_USAGE = 2
EXIT_PIPE = 141
"""128 + SIGPIPE: what a shell reports for a program whose reader (``| head``) went away."""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line naming the fix (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message} (see: {self.prog} --help)\n")


class _Version(argparse.Action):
    """``--version``, looked up only when asked for: the package metadata is not free at start-up."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        import chains

        print(f"{parser.prog} {chains.__version__}")
        parser.exit()


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value:g}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def _shard(text: str) -> tuple[int, int]:
    from chains.engine.shard import parse_shard
    from chains.errors import UsageError

    try:
        shard = parse_shard(text)
    except UsageError as exc:  # argparse names the flag itself: "argument --shard: ..."
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--shard ")) from None
    return shard.index, shard.count


def _address(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a Ray address (auto, HOST:PORT or ray://HOST:10001), got nothing")
    return text


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log each request decision; show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress, notices or summary on stderr")
    parser.add_argument(
        "--prompts-dir", action="append", default=[], metavar="DIR", help="also load prompt files from DIR (repeatable)"
    )


def _add_run_options(parser: argparse.ArgumentParser, *, file_run: bool = True) -> None:
    """Model, limit and cost options; ``file_run`` adds those that only a file run has (output, resume, batches)."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        metavar="PROVIDER:MODEL",
        help="e.g. openai:gpt-4o-mini, or 'fake' (default: fake without OPENAI_API_KEY)",
    )
    model.add_argument(
        "--base-url",
        action="append",
        default=[],
        metavar="URL",
        help="the model's server: OpenAI-compatible (vLLM, Ollama, llama.cpp, LM Studio) or the provider's; "
        "default $OPENAI_BASE_URL; give it again for more endpoints of the same model (requests are spread "
        "by free capacity, a failing one is taken out and probed back in)",
    )
    model.add_argument(
        "--http-backend",
        choices=["aiohttp", "httpx", "lean"],
        default=None,
        help="how openai: models talk HTTP: lean (the default: chain-runner's own client, no OpenAI SDK; about a "
        "third of ChatOpenAI's client CPU per request and a faster start, see benchmarks/README.md), aiohttp or "
        "httpx (ChatOpenAI on that SDK transport)",
    )
    model.add_argument("--temperature", type=_non_negative_float, help="override the prompt files' temperature")
    model.add_argument("--max-tokens", type=_positive_int, help="override the prompt files' max_tokens")
    model.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="S",
        help="seconds per attempt, the whole answer included (default 600, so a long answer fits; "
        "lower it to retry stalled requests sooner)",
    )
    model.add_argument(
        "--max-retries", type=int, default=None, help="retries per request for transient failures (default 5)"
    )
    model.add_argument(
        "--fallback-model",
        action="append",
        default=[],
        metavar="PROVIDER:MODEL",
        help="when a request fails for a reason another model may not share (context too long, content filter, "
        "model not found, retries spent on 429/5xx), try this model next (repeatable, in order)",
    )
    model.add_argument(
        "--repair-attempts",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="ask a JSON answer that breaks its schema again, with the validator's words, up to N times "
        "(default: the prompt file's, else 2; 0 turns it off)",
    )
    model.add_argument(
        "--fake-delay",
        type=_non_negative_float,
        default=None,
        metavar="SECONDS",
        help="per-token delay of the fake model",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--max-concurrency",
        type=_positive_int,
        default=None,
        metavar="N",
        help="never more than N model requests in flight (default 8)",
    )
    if file_run:
        _add_output_options(run)
    limits = parser.add_argument_group("limits, resume and cost")
    limits.add_argument("--rpm", type=_positive_float, help="requests per minute, shared by every request of the run")
    limits.add_argument(
        "--tpm", type=_positive_float, help="tokens per minute (estimated before, settled after each request)"
    )
    if file_run:
        output = limits.add_mutually_exclusive_group()
        output.add_argument(
            "--resume", action="store_true", help="skip inputs that already have a success record in --output"
        )
        output.add_argument(
            "--overwrite", action="store_true", help="replace the records already in --output (default: refuse)"
        )
    limits.add_argument("--cache", metavar="FILE.sqlite", help="answer identical requests from this cache")
    limits.add_argument(
        "--max-cost",
        type=_non_negative_float,
        metavar="USD",
        help="stop admitting inputs before the run would cost more",
    )
    limits.add_argument(
        "--prices",
        metavar="FILE",
        help='price table, JSON/YAML: {"model": {"input": USD, "output": USD}} per 1M tokens',
    )
    _add_tier_options(parser, file_run=file_run)
    if file_run:
        _add_scale_options(parser)


def _add_scale_options(parser: argparse.ArgumentParser) -> None:
    scale = parser.add_argument_group("scale out (see README: Shards and merge)")
    scale.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="I/N",
        help="run only shard I of N (0 <= I < N) of the inputs, by the hash of each input's key; "
        "N runs with their own --output cover every input once (join them with: merge)",
    )
    scale.add_argument(
        "--workers", type=_positive_int, default=None, metavar="N", help="run in N worker processes on Ray"
    )
    scale.add_argument(
        "--ray-address",
        type=_address,
        default=None,
        metavar="ADDR",
        help="run on the Ray cluster at ADDR (auto, HOST:PORT, ray://HOST:10001)",
    )


def _add_tier_options(parser: argparse.ArgumentParser, *, file_run: bool) -> None:
    tiers = parser.add_argument_group("price tier (see README: Cheaper runs)")
    tiers.add_argument(
        "--tier",
        choices=("online", "flex", "batch") if file_run else ("online", "flex"),
        default=None,
        help="online (default); flex: OpenAI's flex tier, batch prices, slower answers; "
        + ("batch: the provider's batch API, about half the price, answers within 24 h" if file_run else ""),
    )
    tiers.add_argument(
        "--flex-fallback",
        action="store_true",
        default=None,
        help="--tier flex: send a request the flex tier has no capacity for (429) at the standard tier",
    )
    if not file_run:
        return
    tiers.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="--tier batch: inputs in flight at once, so the most requests of one batch stage (default 10,000)",
    )
    tiers.add_argument(
        "--batch-poll",
        type=_positive_float,
        default=None,
        metavar="S",
        help="--tier batch: the longest wait between status checks of a batch (default 30)",
    )
    tiers.add_argument(
        "--cancel-on-interrupt",
        action="store_true",
        help="--tier batch: on Ctrl-C cancel the provider's batches (default: leave them running for --resume)",
    )
    tiers.add_argument(
        "--dry-run",
        action="store_true",
        help="send nothing: count the requests of the first step, their tokens and their cost per tier",
    )


def _add_output_options(run: argparse._ArgumentGroup) -> None:
    run.add_argument("--output", metavar="FILE.jsonl", help="write one JSON record per input as each finishes")
    run.add_argument("--metrics-out", metavar="FILE.json", help="write the run summary as JSON")
    run.add_argument(
        "--stream",
        dest="stream",
        action="store_true",
        default=None,
        help="stream tokens (live text for one input; time to first token)",
    )
    run.add_argument("--no-stream", dest="stream", action="store_false", help="do not stream (default for many inputs)")


def build_parser(prog: str = "runner.py") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog, description="Run LangChain chains built from declarative prompt files over many inputs."
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    story = commands.add_parser(
        "story",
        help="write a story for every topic in a file",
        description="Write a story for every topic in FILE (one per line; blank and # lines skipped; - reads stdin).",
    )
    story.add_argument("--topics", required=True, metavar="FILE", help="topics file, one per line (- for stdin)")
    _add_run_options(story)
    _add_common(story)

    run = commands.add_parser(
        "run",
        help="run any chain over an input file",
        description="Run CHAIN over FILE: JSONL objects, CSV with a header, or plain lines for a one-input chain.",
    )
    run.add_argument("chain", help=f"chain name (see: {prog} list)")
    run.add_argument(
        "--input", required=True, metavar="FILE", help="inputs: .jsonl, .csv, or plain lines (- for stdin)"
    )
    _add_run_options(run)
    _add_common(run)

    merge = commands.add_parser(
        "merge",
        help="join the records of several runs, one per input",
        description="Join the records of IN files (e.g. the --output of each --shard run) into OUT, one record "
        "per key: a success over failures (the latest success; else the latest failure); records without a key "
        "are kept; indexes are kept.",
    )
    merge.add_argument("out", metavar="OUT.jsonl", help="the merged records (refused if it holds records)")
    merge.add_argument("inputs", nargs="+", metavar="IN.jsonl", help="records files: the --output of runs")
    merge.add_argument("--overwrite", action="store_true", help="replace the records already in OUT")
    merge.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    merge.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr")

    listing = commands.add_parser("list", help="list the chains", description="List every chain with its inputs.")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    _add_common(listing)

    show = commands.add_parser(
        "show",
        help="show a chain's prompts and inputs",
        description="Show a chain's inputs, prompt files and messages.",
    )
    show.add_argument("chain")
    _add_common(show)

    serve = commands.add_parser(
        "serve",
        help="serve every chain over HTTP",
        description="Serve every chain over HTTP (FastAPI + uvicorn): /chains, /chains/NAME/invoke|batch|stream, /healthz, /metrics, /docs.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /healthz (default $RUNNER_API_KEY)",
    )
    serve.add_argument("--log", metavar="FILE.jsonl", default=None, help="append one JSON line per generation")
    serve.add_argument(
        "--grace",
        type=_non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, let in-flight requests finish for up to SECONDS (default 10)",
    )
    _add_run_options(serve, file_run=False)
    _add_common(serve)
    return parser


def _settings(args: argparse.Namespace) -> RunSettings:
    """The run's settings: the flags, and the key and base URL from the environment when not given."""
    from chains.settings import RunSettings

    values = {
        "model": args.model,
        "base_url": args.base_url[0] if args.base_url else None,
        "extra_base_urls": args.base_url[1:] or None,
        "max_concurrency": args.max_concurrency,
        "http_backend": args.http_backend,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "timeout": args.timeout,
        "max_retries": args.max_retries,
        "fake_token_delay": args.fake_delay,
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_cost": args.max_cost,
        "prices": args.prices,
        "cache": args.cache,
        "prompts_dirs": args.prompts_dir,
        "repair_attempts": args.repair_attempts,
        "fallback_models": args.fallback_model or None,
        "tier": args.tier,
        "flex_fallback": args.flex_fallback,
        "batch_size": getattr(args, "batch_size", None),
        "batch_poll_s": getattr(args, "batch_poll", None),
    }
    return RunSettings.from_env(**values)


def _dispatch(args: argparse.Namespace, prog: str) -> int:
    from chains.cli import commands as app

    if args.command in ("list", "show"):  # the prompt files only: nothing read from the environment
        from chains.settings import RunSettings

        prompts = RunSettings(prompts_dirs=args.prompts_dir)
        if args.command == "list":
            return app.list_command(prompts, as_json=args.json)
        return app.show_command(args.chain, prompts)
    if args.command == "merge":
        return app.merge_command(args.out, args.inputs, overwrite=args.overwrite, quiet=args.quiet)
    import asyncio

    if args.command == "serve":
        serve = app.server_module().serve

        return asyncio.run(
            serve(
                _settings(args),
                host=args.host,
                port=args.port,
                api_key=args.api_key,
                log_path=args.log,
                grace=args.grace,
                quiet=args.quiet,
            )
        )

    return asyncio.run(app.run_command(run_options(args, prog), _settings(args)))


def run_options(args: argparse.Namespace, prog: str) -> RunOptions:
    """What ``story`` / ``run`` were asked to do, besides the settings."""
    from chains.cli.commands import RunOptions

    return RunOptions(
        chain="story" if args.command == "story" else args.chain,
        source=args.topics if args.command == "story" else args.input,
        topics=args.command == "story",
        output=args.output,
        metrics_out=args.metrics_out,
        resume=args.resume,
        overwrite=args.overwrite,
        stream=args.stream,
        quiet=args.quiet,
        cancel_on_interrupt=args.cancel_on_interrupt,
        dry_run=args.dry_run,
        shard=args.shard,
        workers=args.workers,
        ray_address=args.ray_address,
        program=prog,
    )


def main(argv: Sequence[str] | None = None, prog: str = "runner.py") -> int:
    """Run the CLI; ``prog`` is the name it was called by, for usage and error lines."""
    try:
        return _main(argv, prog)
    except BrokenPipeError:  # stdout's reader went away (``| head``): stop quietly, as a shell expects
        discard_stdout()
        return EXIT_PIPE


def _main(argv: Sequence[str] | None, prog: str) -> int:
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
        sys.stdout.flush()  # --help / --version: a closed stdout fails here, not at the interpreter's exit
    except SystemExit as exc:
        sys.stdout.flush()
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from chains.errors import ChainRunnerError

    try:
        code = _dispatch(args, prog)
        sys.stdout.flush()  # what is still buffered: a closed stdout fails here, not at the interpreter's exit
        return code
    except BrokenPipeError:
        raise
    except ChainRunnerError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        from pydantic import ValidationError

        from chains.errors import json_path

        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            field = json_path(first["loc"])
            print(f"error: {field}: {first['msg']} (got {first.get('input')!r})", file=sys.stderr)
            return EXIT_USAGE
        print(f"error: {type(exc).__name__}: {exc} (run again with -v for the traceback)", file=sys.stderr)
        return 1


def main_entry(prog: str = "chain-runner") -> NoReturn:
    """The program (the ``chain-runner`` console script, ``python runner.py``): the process is its own."""
    own_process()
    finish(main(prog=prog))


if __name__ == "__main__":
    main_entry("runner.py")
