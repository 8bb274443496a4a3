"""Patients' passwords: the NIST SP 800-63B-4 policy and argon2id hashing behind a limit.

Policy (§3.1.1.2 of 800-63B-4): at least 15 characters when the password is the only factor,
at least 64 accepted, no composition rules, every Unicode character allowed and counted as
one after NFKC normalisation, and a screen against common and context-specific passwords.
Input beyond 1 KiB is refused before any hashing, which bounds the cost of a request.

Hashing: argon2id with settings never below the OWASP minimum (m=19 MiB, t=2, p=1). At most
``concurrency`` hashes run at once in worker threads; further log-ins wait their turn, and
beyond ``max_waiting`` of them the broker answers "busy" at once instead of queueing without
end, so that a flood of log-ins cannot take every worker thread from the token endpoint.
"""

from __future__ import annotations

import functools
import itertools
import unicodedata
from collections.abc import Callable
from importlib import resources
from typing import TypeVar

import anyio
from anyio import to_thread
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from broker.errors import BrokerError

T = TypeVar("T")

MIN_LENGTH = 15
MAX_LENGTH = 64 * 16  # far above the 64 that NIST asks us to accept
MAX_INPUT_BYTES = 1024


class HashingBusy(BrokerError):
    status = 503
    slug = "busy"
    title = "Too many log-ins at once"


def normalize(password: str) -> str:
    # 800-63B-4 §3.1.1.2: normalise before hashing so that the same password typed on two
    # keyboards (composed or decomposed accents) is the same secret.
    return unicodedata.normalize("NFKC", password)


@functools.cache
def common_passwords() -> frozenset[str]:
    text = resources.files("broker.consent.patients").joinpath("data/common_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().casefold() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


def _is_run(text: str) -> bool:
    """One character repeated, or a run of consecutive characters ("abcdef…", "987654…")."""
    if len(set(text)) == 1:
        return True
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(text)}
    return steps in ({1}, {-1})


def password_problem(password: str, *, context: tuple[str, ...] = ()) -> str | None:
    """Why ``password`` is refused at sign-up (an error code for the page), or None.

    ``context`` holds words the password must not be: the e-mail, its local part, the name.
    """
    if len(password.encode("utf-8")) > MAX_INPUT_BYTES:
        return "password_too_long"
    value = normalize(password)
    if len(value) < MIN_LENGTH:
        return "password_too_short"
    if len(value) > MAX_LENGTH:
        return "password_too_long"
    folded = value.casefold()
    squeezed = "".join(folded.split())
    if folded in common_passwords() or squeezed in common_passwords() or _is_run(squeezed):
        return "password_common"
    for word in context:
        word = "".join(normalize(word).casefold().split())
        if len(word) >= 4 and (squeezed == word or squeezed in (word * 4) or word * 2 in squeezed):
            return "password_personal"
    return None


class PasswordHashing:
    """argon2id hashing and verification, run in worker threads under a capacity limit."""

    def __init__(
        self,
        *,
        memory_kib: int,
        time_cost: int,
        parallelism: int,
        concurrency: int,
        max_waiting: int = 64,
    ) -> None:
        if memory_kib < 19456 or time_cost < 2 or parallelism < 1:
            raise ValueError("argon2id settings below the OWASP minimum (m=19456 KiB, t=2, p=1)")
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._concurrency = concurrency
        self._limiter: anyio.CapacityLimiter | None = None
        self._max_waiting = max_waiting
        self._waiting = 0
        self._dummy_hash: str | None = None

    def hash_now(self, password: str) -> str:
        """Hash in the calling thread (command line, demo seeding): never on the event loop."""
        return self._hasher.hash(normalize(password))

    def _dummy(self) -> str:
        # A hash with the current settings, so that checking a password for an unknown account
        # costs what checking a real one costs (no account enumeration by timing).
        if self._dummy_hash is None:
            self._dummy_hash = self._hasher.hash("not a password of anyone")
        return self._dummy_hash

    def _verify_now(self, stored: str | None, password: str) -> tuple[bool, str | None]:
        value = normalize(password)
        try:
            self._hasher.verify(stored or self._dummy(), value)
        except (VerificationError, InvalidHashError):
            return False, None
        if stored is None:
            return False, None
        # The operator raised the cost since this hash was made: store a fresh one now that
        # the password is known (argon2-cffi compares the hash's parameters with ours).
        new_hash = self._hasher.hash(value) if self._hasher.check_needs_rehash(stored) else None
        return True, new_hash

    async def _run(self, func: Callable[[], T]) -> T:
        if self._waiting >= self._max_waiting:
            raise HashingBusy("too many log-ins are being checked at this moment; try again shortly")
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._concurrency)
        self._waiting += 1  # counted on the event loop thread only: no lock needed
        try:
            return await to_thread.run_sync(func, limiter=self._limiter)
        finally:
            self._waiting -= 1

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self.hash_now(password))

    async def verify(self, stored: str | None, password: str) -> tuple[bool, str | None]:
        """``(matches, new_hash)``; ``stored`` None (unknown account) costs a full check too.

        ``new_hash`` is set when the stored hash used older settings and must be replaced.
        """
        return await self._run(lambda: self._verify_now(stored, password))
