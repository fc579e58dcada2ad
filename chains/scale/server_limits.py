"""What the server said about its own limits (``x-ratelimit-*``), held by the governor for every worker.

A worker reads a response's ``x-ratelimit-remaining-*`` / ``reset-*`` headers (``chains.engine.ratelimit.server_words``)
and sends the newest word of each kind with its next governor call (``Heard``: no call of its own).  The governor
keeps the newest word per kind (``ServerLimits``) and grants rate credit against it, to every worker.  A word is
placed on the governor's clock twice, each time on the safe side (clocks of two processes are never compared: a
worker's times travel as ages, and as offsets from the governor's own stamp on its last grant):

- **When it was said: no earlier than the ``floor``**, the moment the request that carried it was sent.  The server
  had not seen what was sent after that (as far as the governor can know), so every request reported sent since the
  floor is counted as spent out of ``remaining``, and so is every credit granted and not yet reported spent or over
  (it may be spent any moment), whenever it was granted; only the carrying request itself, which the server counted
  before it spoke, is not.  Counted at the moment the word is heard *and* as later reports come in: a send reported
  late still counts against the word it was not seen by.  What the server frees meanwhile is not counted: the view
  errs low, until the next word.  (The moment the worker *read* the word is too late a floor: requests that other
  workers sent between the server's answer and that moment, or while the report was on its way, would be missed.)
- **Its reset: no earlier than** ``reset_s`` after the worker read it (on the governor's clock, the report's
  arrival less its age: later than the truth by the report's transit, which is the safe side for a reset).
- **Used up: nothing until the reset, then one probe.**  When less than one request (or than the next request's
  tokens) remains, no worker gets rate credit until the reset; then one request goes (a probe) if nothing the word
  did not see has already taken the room that frees then (OpenAI's reset is the time until the limit is whole
  again, a sliding-window server's the time until one request leaves its window: one request is all that is sure to
  free).  Its answer brings the server's next word.  A probe whose answer brings no word (it failed) is followed by
  another after ``max(reset_s, PROBE_S)``.
- A word older than ``STALE_S`` past its reset is forgotten (the server stopped sending them): the run's own
  ``--rpm``/``--tpm`` and the AIMD window are what hold then.

Plain data and arithmetic on the governor's clock: ``chains.scale.governor`` calls it, nothing here awaits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

PROBE_S = 1.0
"""A probe whose answer brought no word is followed by another after this long (or the reset, if longer)."""
STALE_S = 60.0
"""A word this long past its reset, with none newer, is forgotten."""
UNLIMITED = 1 << 60

Kind = Literal["requests", "tokens"]


@dataclass(frozen=True)
class Heard:
    """One word of the server's, as a worker sends it: ``remaining`` of ``kind``, more after ``reset_s``, read
    ``age_s`` before the call that carries it; the request that brought it was sent ``sent_age_s`` before that call
    (None: not known, taken as ``age_s``), on rate credit and with ``carried`` tokens (None: not on credit)."""

    kind: Kind
    remaining: float
    reset_s: float
    age_s: float = 0.0
    sent_age_s: float | None = None
    carried: int | None = None


@dataclass
class _View:
    remaining: float
    floor: float
    """Said no earlier than this: what was sent since (bar the carrying request) the server had not seen."""
    since: float
    """Read no later than this (which word is newer)."""
    until: float
    step: float
    used: int = 0
    """Reported sent since ``floor`` (the carrying request not counted): spent out of ``remaining``."""

    def left(self, outstanding: int) -> int:
        return math.floor(self.remaining) - self.used - outstanding


@dataclass
class Room:
    """What the server's words leave for one grant: at most ``requests`` and ``tokens``; ``probe``: one request
    after a reset, on trust."""

    requests: int = UNLIMITED
    tokens: int = UNLIMITED
    probe: bool = False
    frees_in: float | None = None
    """When the reset of a word that holds the grant back comes (None: none does, or a probe's answer is awaited)."""


@dataclass
class ServerLimits:
    views: dict[str, _View] = field(default_factory=dict)
    probed: dict[str, float] = field(default_factory=dict)
    """When the last probe of each kind went."""
    heard: int = 0
    """Words taken in (newer than the one held)."""
    holds: int = 0
    """Grants the server's words held back (some workers asked and got no rate credit)."""
    probes: int = 0

    def hear(self, word: Heard, floor: float, since: float, sent: tuple[int, int]) -> None:
        """Take in a worker's word, said no earlier than ``floor`` and read no later than ``since``, if it is newer
        than the one held; ``sent`` is the requests and tokens reported sent since ``floor`` (the carrying request
        among them)."""
        held = self.views.get(word.kind)
        if held is not None and held.since > since:
            return
        used = sent[0] if word.kind == "requests" else sent[1]
        if word.carried is not None:  # the server counted the request that brought its word
            used -= 1 if word.kind == "requests" else word.carried
        step = max(word.reset_s, PROBE_S)
        self.views[word.kind] = _View(word.remaining, floor, since, since + word.reset_s, step, max(0, used))
        self.heard += 1

    def sent(self, t: float, requests: int, tokens: int) -> None:
        """A request (or tokens owed beyond an estimate) reported sent at ``t``: spent out of every word said before."""
        for kind, view in self.views.items():
            if t >= view.floor:
                view.used += requests if kind == "requests" else tokens

    def room(self, now: float, min_tokens: int, outstanding: tuple[int, int]) -> Room:
        """What the words held leave for a grant of requests of at least ``min_tokens`` tokens each, now, with
        ``outstanding`` requests and tokens granted and not yet reported spent or over."""
        room = Room()
        for kind, view in list(self.views.items()):
            if now > view.until + STALE_S:
                del self.views[kind]
                continue
            requests = kind == "requests"
            need = 1 if requests else max(1, min_tokens)
            left = view.left(outstanding[0] if requests else outstanding[1])
            if left >= need:
                allowed = left
            elif now >= view.until and (left >= 0 or now >= self.probed.get(kind, -math.inf) + view.step):
                # the room that frees at the reset, if nothing the word did not see took it; or the last probe
                # brought no word back
                allowed, room.probe = need, True
            else:
                allowed = 0
                if now < view.until:  # else a probe's answer is awaited: soon, or after ``step`` at the latest
                    wait = view.until - now
                    room.frees_in = wait if room.frees_in is None else max(room.frees_in, wait)
            if requests:
                room.requests = min(room.requests, allowed)
            else:
                room.tokens = min(room.tokens, allowed)
        if room.probe:
            room.requests = min(room.requests, 1)
        return room

    def granted_probe(self, now: float) -> None:
        """A probe went: no other until its answer brings a word (or ``step`` passes)."""
        for kind in self.views:
            self.probed[kind] = now
        self.probes += 1

    def stats(self) -> dict[str, object]:
        return {"server_words": self.heard, "server_holds": self.holds, "server_probes": self.probes}


__all__ = ["PROBE_S", "STALE_S", "Heard", "Room", "ServerLimits"]
