"""What the server said about its own limits (``x-ratelimit-*``), held by the governor for every worker.

A worker reads a response's ``x-ratelimit-remaining-*`` / ``reset-*`` headers (``chains.engine.ratelimit.server_words``)
and sends the newest word of each kind with its next governor call (``Heard``: no call of its own).  The governor
keeps the newest word per kind (``ServerLimits``) and grants rate credit against it, to every worker:

- **Never more than remains.**  The server said ``remaining`` at ``since`` (the worker's observation, moved onto the
  governor's clock by its age).  What it had not seen then is counted as spent out of ``remaining``: the requests
  workers report sent after ``since`` (each report says how long ago each was sent), and every credit granted and not
  yet reported spent; so is every credit granted after the word.  What the server frees meanwhile is not counted:
  the view errs low, until the next word.
- **Used up: nothing until the reset.**  When less than one request (or than the next request's tokens) remains, no
  worker gets rate credit until ``reset_s`` after ``since``.  Then one request goes (a probe) and its answer brings
  the server's next word; OpenAI's reset is the time until the limit is whole again, a sliding-window server's the
  time until one request leaves its window, and one probe at a time is right for both.  A probe whose answer brings
  no word (it failed) is followed by another after ``max(reset_s, PROBE_S)``.
- A word older than ``STALE_S`` past its reset is forgotten (the server stopped sending them): the run's own
  ``--rpm``/``--tpm`` and the AIMD window are what hold then.

Plain data and arithmetic on the governor's clock: ``chains.scale.governor`` calls it, nothing here awaits.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """One word of the server's, as a worker sends it: ``remaining`` of ``kind``, more after ``reset_s``, said
    ``age_s`` before the call that carries it (clocks of two processes are never compared)."""

    kind: Kind
    remaining: float
    reset_s: float
    age_s: float = 0.0


@dataclass
class _View:
    remaining: float
    since: float
    until: float
    step: float
    used: int = 0
    """What the server had not seen when it spoke, and credit granted since: spent out of ``remaining``."""
    probed: float | None = None

    def left(self) -> float:
        return self.remaining - self.used

    def probe_at(self) -> float:
        """When a probe may go: at the reset, then one each ``step`` while no newer word comes back."""
        return self.until if self.probed is None else max(self.until, self.probed + self.step)


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
    heard: int = 0
    """Words taken in (newer than the one held)."""
    holds: int = 0
    """Grants the server's words held back (some workers asked and got no rate credit)."""
    probes: int = 0

    def hear(self, word: Heard, now: float, unseen: Callable[[float], tuple[int, int]]) -> None:
        """Take in a worker's word if it is newer than the one held; ``unseen(t)`` is the requests and tokens a
        server that spoke at ``t`` had not seen (sent since, or on credit not yet spent)."""
        since = now - max(0.0, word.age_s)
        held = self.views.get(word.kind)
        if held is not None and held.since > since:
            return
        requests, tokens = unseen(since)
        used = requests if word.kind == "requests" else tokens
        self.views[word.kind] = _View(word.remaining, since, since + word.reset_s, max(word.reset_s, PROBE_S), used)
        self.heard += 1

    def room(self, now: float, min_tokens: int) -> Room:
        """What the words held leave for a grant of requests of at least ``min_tokens`` tokens each, now."""
        room = Room()
        if not self.views:
            return room
        for kind, view in list(self.views.items()):
            if now > view.until + STALE_S:
                del self.views[kind]
                continue
            need = 1 if kind == "requests" else max(1, min_tokens)
            left = int(view.left())
            if left >= need:
                allowed = left
            elif now >= view.probe_at():
                allowed, room.probe = need, True
            else:
                allowed = 0
                if now < view.until:  # else a probe's answer is awaited: soon, or after ``step`` at the latest
                    wait = view.until - now
                    room.frees_in = wait if room.frees_in is None else max(room.frees_in, wait)
            if kind == "requests":
                room.requests = min(room.requests, allowed)
            else:
                room.tokens = min(room.tokens, allowed)
        if room.probe:
            room.requests = min(room.requests, 1)
        return room

    def granted(self, requests: int, tokens: int, now: float, *, probe: bool = False) -> None:
        """Credit (or tokens owed beyond an estimate) counted out of every word held; a probe marks its time."""
        if not self.views:
            return
        for kind, view in self.views.items():
            view.used += requests if kind == "requests" else tokens
            if probe and now >= view.until and view.left() < 0:
                view.probed = now
        if probe:
            self.probes += 1

    def stats(self) -> dict[str, object]:
        return {"server_words": self.heard, "server_holds": self.holds, "server_probes": self.probes}


__all__ = ["PROBE_S", "STALE_S", "Heard", "Room", "ServerLimits"]
