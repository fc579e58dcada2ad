"""One governor for a whole scaled-out run: the in-flight cap, RPM/TPM, the AIMD window and the budget, in one place.

Workers never ask it once per request: they *lease* capacity in small slices (``Governor.lease``) and spend it
locally (``chains.scale.leased_limits``).  What a lease may hold, and why the limits still hold across every worker:

- **Slots** (the in-flight cap): the slots held by all workers never exceed the AIMD window, itself at most
  ``max_concurrency``; a worker keeps its slots for its next requests and gives idle ones back.  After a 429 the
  window halves (``throttled``) and new slots are granted only once the held ones fall below it; workers are asked
  to give back what they do not use (``heartbeat``).
- **Rate credit** (RPM/TPM): requests and tokens are counted in the window at the moment they are granted, and a
  credit is valid for ``credit_s`` from its arrival at the worker, and never past ``2 * credit_s`` after the worker
  asked for it (a grant slower than that on its way arrives void); the governor counts grants over
  ``window_s + 2 * credit_s``, so any ``window_s`` window of *sends* holds at most ``rpm`` requests and ``tpm``
  tokens.  A request that used more tokens than its estimate reports the excess (``debt``), counted at once.
- **The server's word** (``x-ratelimit-*``): workers send the newest of what the server's headers said with their
  next call; no worker gets more rate credit than the server says remains, and none until its reset when nothing
  remains (``chains.scale.server_limits``).  Rate credit is then asked for every request, ``--rpm`` or not.  What
  the server may not have seen counts against its word: each request sent since the one that brought it, and each
  credit not yet reported spent or over (``Report.over``: a send in time may be reported late).
- **Budget** (``--max-cost``): USD credit is reserved when granted; spent and unused credit come back in the next
  call.  Granted + spent never exceeds ``max_cost``; when the rest cannot cover a request, the run's budget is
  exhausted and every worker hears so.
- **Dead workers**: a lease is renewed by the worker's heartbeat; a worker silent for ``ttl_s`` has its slots
  reclaimed and its unsettled USD counted as spent (its in-flight requests may have been billed).

``Governor`` is plain asyncio code (tested without Ray); ``start_governor`` runs it as a Ray actor.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from chains.scale.server_limits import Heard, Room, ServerLimits
from chains.settings import RunSettings

WANTING_S = 2.0
"""A worker that asked for slots and got none this recently is waiting for its share."""
USD_EPSILON = 1e-9
"""Float sums of prices: amounts this close are equal."""
METER_S = 60.0
"""While the server's words are held, a grant tells the worker to ask rate credit for every request this long."""
SERVER_CREDIT_S = 0.1
"""Rate credit is good this long while the server's words are held: a worker asks only for what can go now."""
SENDS_KEPT_S = 120.0
"""Sends on credit are remembered this long; a word brought by a request sent longer ago is not taken in."""


@dataclass(frozen=True)
class Ask:
    """What a worker needs now (each at least for its next request) and would like (a slice)."""

    slots: int = 0
    requests: int = 0
    tokens: int = 0
    usd: float = 0.0
    min_tokens: int = 0
    min_usd: float = 0.0


@dataclass(frozen=True)
class Grant:
    slots: int = 0
    requests: int = 0
    tokens: int = 0
    usd: float = 0.0
    credit_s: float = 0.0
    """Rate credit is good this long from its arrival (at most twice this long from the ask); slots and USD stay until
    given back."""
    exhausted: bool = False
    """The budget cannot cover the next request: stop admitting inputs."""
    retry_in: float | None = None
    """An empty grant held back by the rate: when its window frees capacity (ask again then, not sooner)."""
    meter_s: float = 0.0
    """The server's ``x-ratelimit-*`` words are in force: ask rate credit for every request this long."""
    seq: int = 0
    """Which rate credit this is (0: none): a report says up to which one its worker's credit is over."""
    at: float = 0.0
    """The governor's clock when granted: the worker's times go back as offsets from it (``Report.clock``)."""


@dataclass
class Report:
    """What a worker gives back or owes, sent with its next lease or heartbeat (no call of its own)."""

    slots: int = 0
    usd_unused: float = 0.0
    usd_spent: float = 0.0
    token_debt: int = 0
    throttled: int = 0
    succeeded: int = 0
    heard: tuple[Heard, ...] = ()
    """The newest of what the server's headers said, per kind (``chains.scale.server_limits``)."""
    sent: tuple[tuple[float, int], ...] = ()
    """(seconds ago, tokens) of each request sent on rate credit since the last call: what the server has seen."""
    over: int = 0
    """The worker's credits up to this ``Grant.seq`` are over: all sent on them is in this report or an earlier one."""
    clock: float | None = None
    """At most the governor's clock when taken: the last ``Grant.at`` plus the time since it arrived (None: none)."""


@dataclass
class _Holder:
    slots: int = 0
    usd: float = 0.0
    seen: float = 0.0
    credit: tuple[int, int] = (0, 0)
    """Rate credit (requests, tokens) granted and not yet reported spent or over."""
    credit_seq: int = 0


@dataclass
class Governor:
    max_concurrency: int
    rpm: float | None = None
    tpm: float | None = None
    max_cost: float | None = None
    window_s: float = 60.0
    credit_s: float | None = None
    """How long rate credit is good for; None: a sixtieth of the window, at most 1 s."""
    ttl_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    window: float = field(init=False)
    held: int = 0
    spent: float = 0.0
    reserved: float = 0.0
    exhausted: bool = False
    leases: int = 0
    empty: int = 0
    peak_held: int = 0
    _holders: dict[str, _Holder] = field(default_factory=dict)
    _wanting: dict[str, float] = field(default_factory=dict)
    """Workers whose last ask for slots got none, and when."""
    _grants: deque[tuple[float, int, int]] = field(default_factory=deque)
    _sends: list[tuple[float, int, int]] = field(default_factory=list)
    """(when, requests, tokens) sent on rate credit (or owed beyond estimates) in the last ``SENDS_KEPT_S``, as
    reported, in order (on the governor's clock: no earlier than sent)."""
    _seq: int = 0
    _requests: int = 0
    _tokens: int = 0
    server: ServerLimits = field(init=False)

    def __post_init__(self) -> None:
        self.window = float(self.max_concurrency)
        if self.credit_s is None:
            self.credit_s = min(1.0, self.window_s / 60)
        self.server = ServerLimits()

    @classmethod
    def for_settings(cls, settings: RunSettings, *, window_s: float = 60.0) -> Governor:
        return cls(settings.max_concurrency, settings.rpm, settings.tpm, settings.max_cost, window_s=window_s)

    # ------------------------------------------------------------------ the calls workers make

    async def lease(self, worker: str, ask: Ask, report: Report | None = None) -> Grant:
        """Up to the slice of each asked dimension, if at least its minimum is free now; else an empty grant (the
        worker asks again shortly: a governor that never blocks cannot be deadlocked by a stale ask)."""
        self._take_report(worker, report)
        self._reclaim()
        if ask.requests:  # a worker that asks for rate credit has voided what was left of its last (after the report)
            self._holder(worker).credit = (0, 0)
        grant = self._try_grant(worker, ask)
        if ask.slots:
            if grant is None or not grant.slots:
                self._wanting[worker] = self.clock()  # heard by the others' heartbeats: share the window
            else:
                self._wanting.pop(worker, None)
        if grant is None:
            self.empty += 1
            retry_in = self._rate_frees_in(ask) if ask.requests else None
            return Grant(retry_in=retry_in, meter_s=self._meter(), at=self.clock())
        return grant

    async def heartbeat(self, worker: str, report: Report | None = None) -> int:
        """Renews the worker's lease; the slots it should give back: what is over the window (it shrank), and,
        while another worker waits for slots, what it holds beyond a fair share of the window."""
        self._take_report(worker, report)
        self._reclaim()
        holder = self._holders.get(worker)
        if holder is None:
            return 0
        over = self.held - max(1, int(self.window))
        now = self.clock()
        waiting = self._others_waiting(worker, now)
        if waiting:
            over = max(over, holder.slots - max(1, int(self.window) // (waiting + 1)))
        return max(0, min(holder.slots, over))

    async def forget(self, worker: str) -> None:
        """A worker the driver saw die: its slots come back now, its unsettled USD counts as spent."""
        holder = self._holders.pop(worker, None)
        if holder is not None:
            self.held -= holder.slots
            self.reserved -= holder.usd
            self.spent += holder.usd

    def stats(self) -> dict[str, Any]:
        return {
            "held": self.held,
            "peak_held": self.peak_held,
            "window": round(self.window, 3),
            "spent": round(self.spent, 6),
            "reserved": round(self.reserved, 6),
            "exhausted": self.exhausted,
            "leases": self.leases,
            "empty_leases": self.empty,
            "workers": len(self._holders),
            **self.server.stats(),
        }

    # ------------------------------------------------------------------ inside

    def _holder(self, worker: str) -> _Holder:
        holder = self._holders.setdefault(worker, _Holder())
        holder.seen = self.clock()
        return holder

    def _take_report(self, worker: str, report: Report | None) -> None:
        holder = self._holder(worker)
        if report is None:
            return
        returned = min(report.slots, holder.slots)
        holder.slots -= returned
        self.held -= returned
        back = min(report.usd_unused + report.usd_spent, holder.usd)
        holder.usd -= back
        self.reserved -= back
        self.spent += report.usd_spent
        now = self.clock()
        if report.token_debt > 0:
            self._count(0, report.token_debt)
            self._sent(now, 0, report.token_debt)
        for _ in range(report.throttled):
            self.window = max(1.0, self.window / 2)
        for _ in range(report.succeeded):
            if self.window < self.max_concurrency:
                self.window = min(float(self.max_concurrency), self.window + 1.0 / self.window)
        for age, tokens in report.sent:  # sent no later than ``age`` before the report's arrival
            self._sent(now - age, 1, tokens)
            holder.credit = (max(0, holder.credit[0] - 1), max(0, holder.credit[1] - tokens))
        if report.over >= holder.credit_seq:  # what was left of it was not spent
            holder.credit = (0, 0)
        if self._sends and self._sends[0][0] < now - SENDS_KEPT_S:
            del self._sends[: bisect.bisect_left(self._sends, (now - SENDS_KEPT_S,))]
        for word in report.heard:  # said no earlier than its request was sent, read no later than the arrival - age
            sent_age = word.age_s if word.sent_age_s is None else word.sent_age_s
            floor = (now if report.clock is None else min(now, report.clock)) - sent_age
            if floor >= now - SENDS_KEPT_S:  # else what was sent since is no longer known: the next word will do
                self.server.hear(word, floor, now - word.age_s, self._sent_since(floor))

    def _try_grant(self, worker: str, ask: Ask) -> Grant | None:
        now = self.clock()
        self._expire(now)
        slots = min(ask.slots, max(0, int(self.window) - self.held), self._share_left(worker, now))
        if ask.slots and slots < 1:
            return None
        requests = min(ask.requests, self._free_requests())
        tokens = min(ask.tokens, self._free_tokens())
        room = Room()
        if ask.requests:
            need = min(ask.min_tokens, self.tpm or ask.min_tokens)
            if requests < 1 or tokens < need:
                return None
            room = self.server.room(now, ask.min_tokens, self._outstanding())
            requests, tokens = min(requests, room.requests), min(tokens, room.tokens)
            if requests < 1 or tokens < need:
                self.server.holds += 1
                return None
        usd = 0.0
        if self.max_cost is not None and (ask.usd or ask.min_usd):
            free = self.max_cost - self.spent - self.reserved
            if free < ask.min_usd - USD_EPSILON:
                if self.reserved <= USD_EPSILON or self.exhausted:
                    self.exhausted = True  # nothing out on credit can come back: the rest will not fit
                    return Grant(exhausted=True)
                return None  # credit held by others may come back unused
            usd = min(max(ask.usd, ask.min_usd), free)
        holder = self._holder(worker)
        holder.slots += slots
        holder.usd += usd
        self.held += slots
        self.peak_held = max(self.peak_held, self.held)
        self.reserved += usd
        credit = min(self._credit(), SERVER_CREDIT_S) if self.server.views else self._credit()
        seq = 0
        if requests or tokens:
            self._count(requests, tokens)
            if room.probe:
                self.server.granted_probe(now)
            self._seq += 1
            seq = self._seq
            holder.credit, holder.credit_seq = (requests, tokens), seq  # the worker's old credit is void
        self.leases += 1
        return Grant(slots, requests, tokens, usd, credit, self.exhausted, meter_s=self._meter(), seq=seq, at=now)

    def _rate_frees_in(self, ask: Ask) -> float | None:
        """Seconds until the run's window or the server's word lets the ask through (None: the rate is not what
        holds it back)."""
        now = self.clock()
        waits = []
        if self._grants and (self._free_requests() <= 0 or self._free_tokens() <= 0):
            waits.append(max(0.0, self._grants[0][0] + self.window_s + 2 * self._credit() - now))
        server = self.server.room(now, ask.min_tokens, self._outstanding()).frees_in
        if server is not None:
            waits.append(server)
        return max(waits) if waits else None

    def _meter(self) -> float:
        return METER_S if self.server.views else 0.0

    def _sent(self, t: float, requests: int, tokens: int) -> None:
        bisect.insort(self._sends, (t, requests, tokens))
        self.server.sent(t, requests, tokens)

    def _sent_since(self, t: float) -> tuple[int, int]:
        """Requests and tokens reported sent at ``t`` or later."""
        later = self._sends[bisect.bisect_left(self._sends, (t, -1, -1)) :]
        return sum(r for _, r, _ in later), sum(n for _, _, n in later)

    def _outstanding(self) -> tuple[int, int]:
        """Requests and tokens on credit that no worker has reported spent or over yet (it may be spent any
        moment, or may have been and not be reported yet)."""
        return sum(h.credit[0] for h in self._holders.values()), sum(h.credit[1] for h in self._holders.values())

    def _others_waiting(self, worker: str, now: float) -> int:
        return sum(1 for w, t in self._wanting.items() if w != worker and now - t < WANTING_S)

    def _share_left(self, worker: str, now: float) -> int:
        """Slots ``worker`` may still take: any while nobody else waits, else up to a fair share of the window."""
        waiting = self._others_waiting(worker, now)
        if not waiting:
            return 1_000_000
        holder = self._holders.get(worker)
        held = holder.slots if holder is not None else 0
        return max(0, max(1, int(self.window) // (waiting + 1)) - held)

    def _credit(self) -> float:
        assert self.credit_s is not None
        return self.credit_s

    def _count(self, requests: int, tokens: int) -> None:
        self._grants.append((self.clock(), requests, tokens))
        self._requests += requests
        self._tokens += tokens

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s - 2 * self._credit()
        while self._grants and self._grants[0][0] <= horizon:
            _, requests, tokens = self._grants.popleft()
            self._requests -= requests
            self._tokens -= tokens

    def _free_requests(self) -> int:
        return 1_000_000 if self.rpm is None else max(0, int(self.rpm) - self._requests)

    def _free_tokens(self) -> int:
        return 1_000_000_000 if self.tpm is None else max(0, int(self.tpm) - self._tokens)

    def _reclaim(self) -> None:
        """A worker silent for ``ttl_s`` is dead: its slots come back, its unsettled USD counts as spent."""
        now = self.clock()
        for worker, holder in list(self._holders.items()):
            if now - holder.seen > self.ttl_s and (holder.slots or holder.usd or holder.credit != (0, 0)):
                self.held -= holder.slots
                self.reserved -= holder.usd
                self.spent += holder.usd
                del self._holders[worker]


def start_governor(settings: RunSettings, *, window_s: float = 60.0) -> Any:
    """The run's governor as an async Ray actor (one per run, on the driver's node)."""
    import ray

    actor: Any = cast(Any, ray).remote(num_cpus=0, max_concurrency=10_000)(_GovernorActor)
    return actor.remote(settings.max_concurrency, settings.rpm, settings.tpm, settings.max_cost, window_s)


class _GovernorActor:
    """``Governor`` behind Ray: its methods are the actor's."""

    def __init__(
        self, max_concurrency: int, rpm: float | None, tpm: float | None, max_cost: float | None, window_s: float
    ) -> None:
        self.governor = Governor(max_concurrency, rpm, tpm, max_cost, window_s=window_s)

    async def lease(self, worker: str, ask: Ask, report: Report | None = None) -> Grant:
        return await self.governor.lease(worker, ask, report)

    async def heartbeat(self, worker: str, report: Report | None = None) -> int:
        return await self.governor.heartbeat(worker, report)

    async def forget(self, worker: str) -> None:
        await self.governor.forget(worker)

    async def stats(self) -> dict[str, Any]:
        return self.governor.stats()
