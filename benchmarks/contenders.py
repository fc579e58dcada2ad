"""The benchmark's contenders: the same work done by what a user would otherwise write, and by us.

Every contender sends the same request for each input ``{"text": "item I"}``: one
user message ``item I`` to model ``bench`` of an OpenAI-compatible server at
``--url`` (the mock server ``run.py`` starts), at most ``concurrency`` requests in
flight, streamed or not.  Streamed contenders pass every content chunk to an
async token callback (which counts it), and ask for the usage chunk.

Run one contender in its own process (``run.py`` does this, so that CPU time and
peak RSS belong to that contender alone)::

    python benchmarks/contenders.py '{"contender": "raw", "url": "http://127.0.0.1:PORT/v1",
                                      "n": 100, "concurrency": 10, "stream": false}'

(a JSON list of such jobs runs them one after the other in one process: ``--quick``).

It prints one line ``RESULT {json}`` per job: wall time and CPU time (user + system) of
the run itself (imports and setup excluded, and reported apart), peak RSS, the
number of good answers and of streamed chunks.  The project's CLI contender is
run by ``run.py`` directly as ``python runner.py run echo ...`` and measured as
a whole process.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPTS_DIR = HERE / "prompts"
MODEL = "bench"
API_KEY = "bench-key"  # the mock server accepts anything


@dataclass
class Job:
    contender: str
    url: str
    n: int
    concurrency: int
    stream: bool = False
    chunks: int = 8
    """Content chunks the server sends per answer (the first is ``echo: <text>``)."""

    @property
    def texts(self) -> list[str]:
        return [f"item {i}" for i in range(self.n)]


@dataclass
class Tally:
    """What a contender got back; checked the same way for every contender."""

    ok: int = 0
    bad: int = 0
    errors: int = 0
    chunks: int = 0
    first_error: str | None = None
    samples: list[str] = field(default_factory=list)

    def output(self, text: str, output: Any) -> None:
        if isinstance(output, str) and output.startswith(f"echo: {text}"):
            self.ok += 1
        else:
            self.bad += 1
            if len(self.samples) < 3:
                self.samples.append(repr(output)[:120])

    def error(self, exc: BaseException | str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"[:300]


# ----------------------------------------------------------------------------- raw OpenAI SDK


def _openai_client(job: Job, transport: str) -> Any:
    from openai import AsyncOpenAI

    kwargs: dict[str, Any] = {"base_url": job.url, "api_key": API_KEY, "max_retries": 0, "timeout": 60.0}
    if transport == "aiohttp":
        from openai import DefaultAioHttpClient

        kwargs["http_client"] = DefaultAioHttpClient()
    return AsyncOpenAI(**kwargs)


async def _raw_call(client: Any, job: Job, text: str, on_token: Callable[[str], Awaitable[None]]) -> str:
    messages = [{"role": "user", "content": text}]
    if not job.stream:
        response = await client.chat.completions.create(model=MODEL, messages=messages)
        return str(response.choices[0].message.content)
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    parts: list[str] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            piece = chunk.choices[0].delta.content
            parts.append(piece)
            await on_token(piece)
    return "".join(parts)


def _token_counter(tally: Tally) -> Callable[[str], Awaitable[None]]:
    async def on_token(piece: str) -> None:
        tally.chunks += 1

    return on_token


async def raw_semaphore(job: Job, tally: Tally, transport: str = "httpx") -> None:
    """The tutorial: ``AsyncOpenAI`` + ``asyncio.Semaphore`` + ``gather`` over every input."""
    client = _openai_client(job, transport)
    on_token = _token_counter(tally)
    semaphore = asyncio.Semaphore(job.concurrency)

    async def one(text: str) -> None:
        async with semaphore:
            try:
                tally.output(text, await _raw_call(client, job, text, on_token))
            except Exception as exc:
                tally.error(exc)

    await setup_done()
    await asyncio.gather(*(one(t) for t in job.texts))
    await client.close()


async def raw_batches(job: Job, tally: Tally) -> None:
    """The other tutorial: fixed batches of ``concurrency`` inputs, each batch one ``gather``."""
    client = _openai_client(job, "httpx")
    on_token = _token_counter(tally)
    texts = job.texts

    async def one(text: str) -> None:
        try:
            tally.output(text, await _raw_call(client, job, text, on_token))
        except Exception as exc:
            tally.error(exc)

    await setup_done()
    for start in range(0, len(texts), job.concurrency):
        await asyncio.gather(*(one(t) for t in texts[start : start + job.concurrency]))
    await client.close()


# ----------------------------------------------------------------------------- plain LangChain


def _lc_model(job: Job) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=MODEL,
        base_url=job.url,
        api_key=API_KEY,  # type: ignore[arg-type]
        max_retries=0,
        timeout=60.0,
        streaming=job.stream,
        stream_usage=job.stream or None,
    )


def _lc_chain(job: Job) -> Any:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    prompt = ChatPromptTemplate.from_messages([("human", "{text}")])
    return prompt | _lc_model(job) | StrOutputParser()


def _lc_token_handler(tally: Tally) -> Any:
    from langchain_core.callbacks import AsyncCallbackHandler

    class TokenCounter(AsyncCallbackHandler):
        async def on_llm_new_token(self, token: str | list[str | dict[str, Any]], **kwargs: Any) -> None:
            if token:
                tally.chunks += 1

    return TokenCounter()


async def lc_abatch(job: Job, tally: Tally) -> None:
    """``prompt | ChatOpenAI | StrOutputParser`` with ``abatch(max_concurrency=...)``;
    streamed: ``ChatOpenAI(streaming=True)`` and an async token callback."""
    chain = _lc_chain(job)
    config: dict[str, Any] = {"max_concurrency": job.concurrency}
    if job.stream:
        config["callbacks"] = [_lc_token_handler(tally)]
    texts = job.texts
    await setup_done()
    outputs = await chain.abatch([{"text": t} for t in texts], config=config, return_exceptions=True)
    for text, output in zip(texts, outputs, strict=True):
        if isinstance(output, BaseException):
            tally.error(output)
        else:
            tally.output(text, output)


async def lc_astream(job: Job, tally: Tally) -> None:
    """``chain.astream(input)`` per input (semaphore + gather) with an async token callback."""
    chain = _lc_chain(job)
    config = {"callbacks": [_lc_token_handler(tally)]}
    semaphore = asyncio.Semaphore(job.concurrency)

    async def one(text: str) -> None:
        async with semaphore:
            try:
                parts = [piece async for piece in chain.astream({"text": text}, config=config)]
                tally.output(text, "".join(parts))
            except Exception as exc:
                tally.error(exc)

    await setup_done()
    await asyncio.gather(*(one(t) for t in job.texts))


async def lc_ainvoke(job: Job, tally: Tally) -> None:
    """Bare ``ChatOpenAI.ainvoke(text)`` (no prompt, no parser): LangChain's floor per request."""
    model = _lc_model(job)
    semaphore = asyncio.Semaphore(job.concurrency)

    async def one(text: str) -> None:
        async with semaphore:
            try:
                tally.output(text, (await model.ainvoke(text)).text)
            except Exception as exc:
                tally.error(exc)

    await setup_done()
    await asyncio.gather(*(one(t) for t in job.texts))


# ----------------------------------------------------------------------------- the project


async def project_lib(job: Job, tally: Tally, **options: Any) -> None:
    """The library API: ``ModelSession`` + ``get_chain`` + ``run_batch`` (metrics, limits, records on);
    streamed: ``RunSettings(stream=True)`` and a ``TokenStreamHandler`` as the token callback."""
    sys.path.insert(0, str(ROOT))
    from chains.engine.callbacks import TokenStreamHandler
    from chains.engine.execution import run_batch
    from chains.providers.models import ModelSession
    from chains.settings import RunSettings
    from chains.spec.prompts_library import PromptLibrary
    from chains.spec.registry import get_chain

    settings = RunSettings(
        model=f"openai:{MODEL}",
        base_url=job.url,
        api_key=API_KEY,  # type: ignore[arg-type]
        max_concurrency=job.concurrency,
        stream=job.stream,
        **options,
    )
    session = ModelSession(settings)
    chain = get_chain("echo", session.model, library=PromptLibrary([PROMPTS_DIR]))

    def on_token(run_id: Any, token: str) -> None:
        tally.chunks += 1

    callbacks = [TokenStreamHandler(on_token)] if job.stream else []
    await setup_done()
    async with session:
        batch = run_batch(
            chain,
            ({"text": t} for t in job.texts),
            settings=session.settings,
            limits=session.limits,
            callbacks=callbacks,
        )
        async for record in batch:
            if record.error is not None:
                tally.error(f"{record.error['type']}: {record.error['message']}"[:300])
            else:
                tally.output(record.input["text"], record.output)


async def project_lib_nostream(job: Job, tally: Tally) -> None:
    """``project_lib`` with streaming off: the same answers in one response each (the batch default)."""
    job.stream = False
    await project_lib(job, tally)


async def project_lib_httpx(job: Job, tally: Tally) -> None:
    """``project_lib`` on ChatOpenAI with the SDK's httpx transport (``RunSettings(http_backend="httpx")``), the
    slowest of the three backends (the default is the lean model)."""
    await project_lib(job, tally, http_backend="httpx")


CONTENDERS: dict[str, Callable[[Job, Tally], Awaitable[None]]] = {
    "raw": raw_semaphore,
    "raw_aiohttp": lambda job, tally: raw_semaphore(job, tally, transport="aiohttp"),
    "raw_batches": raw_batches,
    "lc_ainvoke": lc_ainvoke,
    "lc_abatch": lc_abatch,
    "lc_astream": lc_astream,
    "project_lib": project_lib,
    "project_nostream": project_lib_nostream,
    "project_httpx": project_lib_httpx,
}
"""In-process contenders; ``project_cli`` is run by ``run.py`` as ``runner.py`` itself."""

DESCRIPTIONS = {
    "raw": "AsyncOpenAI (its default httpx transport: httpx2 in openai 3.x) + Semaphore + gather",
    "raw_aiohttp": "AsyncOpenAI with DefaultAioHttpClient + Semaphore + gather",
    "raw_batches": "AsyncOpenAI, fixed batches of `concurrency`, one gather each",
    "lc_ainvoke": "bare ChatOpenAI.ainvoke + Semaphore + gather",
    "lc_abatch": "prompt | ChatOpenAI | StrOutputParser, abatch(max_concurrency)",
    "lc_astream": "prompt | ChatOpenAI | StrOutputParser, astream per input + async token callback",
    "project_lib": "chain-runner library: ModelSession + get_chain + run_batch",
    "project_cli": "chain-runner CLI end to end: runner.py run echo ... --output out.jsonl -q (whole process)",
    "project_nostream": "project_lib with stream=False: the same 200-piece answers, one response each",
    "project_httpx": "project_lib on the SDK's httpx transport: RunSettings(http_backend='httpx')",
}


def aiohttp_available() -> bool:
    """Whether the OpenAI SDK's ``DefaultAioHttpClient`` works here (openai 3.x vendors
    httpx-aiohttp and needs only ``aiohttp``; openai 1.x needs the httpx-aiohttp package)."""
    try:
        import openai._base_client as base

        missing = getattr(base, "_DefaultAioHttpClient", None)
        if missing is not None:
            return missing.__name__ != "_MissingAioHttpClient"
        import httpx_aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


def project_has_http_backend() -> bool:
    """Whether ``RunSettings`` has the ``http_backend`` switch (added with the aiohttp transport)."""
    sys.path.insert(0, str(ROOT))
    try:
        from chains.settings import RunSettings
    except ImportError:
        return False
    return "http_backend" in RunSettings.model_fields


# ----------------------------------------------------------------------------- measurement


class _Clock:
    """The start of the measured phase, set by ``setup_done``."""

    wall: float | None = None
    cpu: float | None = None


def _cpu_now() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def setup_done() -> None:
    """Contenders call this once their client and chain are built, right before the first request."""
    _Clock.wall = time.perf_counter()
    _Clock.cpu = _cpu_now()


async def _run(job: Job) -> dict[str, Any]:
    tally = Tally()
    setup_wall = time.perf_counter()
    setup_cpu = _cpu_now()
    await CONTENDERS[job.contender](job, tally)
    end_wall, end_cpu = time.perf_counter(), _cpu_now()
    start_wall = _Clock.wall if _Clock.wall is not None else setup_wall
    start_cpu = _Clock.cpu if _Clock.cpu is not None else setup_cpu
    return {
        "wall_s": end_wall - start_wall,
        "cpu_s": end_cpu - start_cpu,
        "setup_s": start_wall - setup_wall,
        "ok": tally.ok,
        "bad": tally.bad,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "bad_samples": tally.samples,
        "chunks": tally.chunks,
    }


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM``; ``ru_maxrss`` would include the parent's, see run.py)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str]) -> int:
    """One job (a JSON object), or several run one after the other (a JSON list: ``--quick``)."""
    spec = json.loads(argv[0])
    jobs = [Job(**s) for s in (spec if isinstance(spec, list) else [spec])]
    for job in jobs:
        if job.contender not in CONTENDERS:
            print(f"unknown contender {job.contender!r}; one of {sorted(CONTENDERS)}", file=sys.stderr)
            return 2
    asyncio.run(_run_all(jobs))
    return 0


async def _run_all(jobs: list[Job]) -> None:
    # One event loop for all jobs: LangChain's ChatOpenAI shares a default HTTP client
    # per process, which must not outlive its loop.
    for job in jobs:
        _Clock.wall = _Clock.cpu = None
        result = await _run(job)
        result["contender"] = job.contender
        result["maxrss_mb"] = peak_rss_mb()
        sys.stdout.write("RESULT " + json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
