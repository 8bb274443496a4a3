"""The password policy (NIST SP 800-63B-4) and argon2id hashing (OWASP)."""

from __future__ import annotations

import anyio
import pytest
from argon2 import PasswordHasher

from broker.consent.patients.passwords import HashingBusy, PasswordHashing, password_problem

CHEAP = {"memory_kib": 19456, "time_cost": 2, "parallelism": 1, "concurrency": 1}


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("a" * 14, "password_too_short"),
        ("e\u0301" * 14, "password_too_short"),  # NFKC: 14 characters "é", not 28
        ("x" * 1025, "password_too_long"),
        ("é" * 513, "password_too_long"),  # 1,026 bytes of UTF-8
        ("PasswordPassword", "password_common"),
        ("mot de passe 123456", "password_common"),
        ("zzzzzzzzzzzzzzzz", "password_common"),
        ("abcdefghijklmnop", "password_common"),
        ("ponmlkjihgfedcba", "password_common"),
        ("123456789012345", "password_common"),
        ("9876543210987654", None),
    ],
)
def test_policy(password: str, problem: str | None) -> None:
    assert password_problem(password) == problem


def test_no_composition_rules_and_64_characters_accepted() -> None:
    assert password_problem("all lower case words only here") is None
    assert password_problem("x" * 3 + " une phrase assez longue " * 3) is None
    assert password_problem("🌿🌻🌷 " * 5) is None
    assert password_problem("k7" * 40) is None  # 80 characters


def test_personal_words_are_refused() -> None:
    context = ("camille.durand@example.org", "camille.durand", "Camille Durand")
    assert password_problem("Camille Durand", context=context) is not None  # too short anyway
    assert password_problem("camilledurandcamilledurand", context=context) == "password_personal"
    assert password_problem("camille.durand@example.org", context=context) == "password_personal"
    assert password_problem("the garden of camille durand in spring", context=context) is None


def test_minimum_parameters_are_enforced() -> None:
    with pytest.raises(ValueError, match="OWASP"):
        PasswordHashing(memory_kib=8192, time_cost=2, parallelism=1, concurrency=1)
    with pytest.raises(ValueError, match="OWASP"):
        PasswordHashing(memory_kib=19456, time_cost=1, parallelism=1, concurrency=1)


def test_hash_verify_and_rehash_when_parameters_change() -> None:
    old = PasswordHashing(**CHEAP)
    stored = old.hash_now("une phrase de passe correcte")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")

    async def run() -> None:
        assert await old.verify(stored, "une phrase de passe correcte") == (True, None)
        assert await old.verify(stored, "une phrase de passe fausse!") == (False, None)
        assert await old.verify(None, "une phrase de passe correcte") == (False, None)
        stronger = PasswordHashing(memory_kib=24576, time_cost=3, parallelism=1, concurrency=1)
        matches, new_hash = await stronger.verify(stored, "une phrase de passe correcte")
        assert matches and new_hash and new_hash.startswith("$argon2id$v=19$m=24576,t=3,p=1$")
        assert PasswordHasher().verify(new_hash, "une phrase de passe correcte")

    anyio.run(run)


def test_normalised_forms_are_the_same_password() -> None:
    hashing = PasswordHashing(**CHEAP)
    stored = hashing.hash_now("un café très serré, s'il vous plaît")  # composed é
    decomposed = "un cafe\u0301 tre\u0300s serre\u0301, s'il vous plai\u0302t"

    async def run() -> None:
        assert (await hashing.verify(stored, decomposed))[0]

    anyio.run(run)


def test_a_flood_of_checks_is_refused_beyond_the_queue() -> None:
    hashing = PasswordHashing(**CHEAP, max_waiting=2)
    stored = hashing.hash_now("une phrase de passe correcte")
    outcomes: list[str] = []

    async def attempt() -> None:
        try:
            await hashing.verify(stored, "une phrase de passe correcte")
            outcomes.append("checked")
        except HashingBusy:
            outcomes.append("busy")

    async def run() -> None:
        async with anyio.create_task_group() as group:
            for _ in range(6):
                group.start_soon(attempt)

    anyio.run(run)
    assert outcomes.count("checked") == 2 and outcomes.count("busy") == 4
