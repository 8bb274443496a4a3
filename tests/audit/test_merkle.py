"""The Merkle tree against RFC 6962/9162: published vectors, an independent reference, and
properties over random tree sizes."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

# The RFC 6962 test data published with Certificate Transparency's reference code: eight
# leaves, the root of every prefix, and a few proofs over the tree of eight.
LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
)]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = {
    (0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}
CONSISTENCY = {
    (2, 8): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
}
HASHES = [leaf_hash(x) for x in LEAVES]


# -- an independent reference: the tree built level by level from the RFC's definition ------

def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_root(data: list[bytes]) -> bytes:
    """MTH written from RFC 9162 §2.1.1 directly on the leaf data, without the module."""
    if not data:
        return _h(b"")
    if len(data) == 1:
        return _h(b"\x00" + data[0])
    k = 1
    while k * 2 < len(data):
        k *= 2
    return _h(b"\x01" + ref_root(data[:k]) + ref_root(data[k:]))


def ref_path(m: int, data: list[bytes]) -> list[bytes]:
    if len(data) == 1:
        return []
    k = 1
    while k * 2 < len(data):
        k *= 2
    if m < k:
        return [*ref_path(m, data[:k]), ref_root(data[k:])]
    return [*ref_path(m - k, data[k:]), ref_root(data[:k])]


def ref_subproof(m: int, data: list[bytes], b: bool) -> list[bytes]:
    if m == len(data):
        return [] if b else [ref_root(data)]
    k = 1
    while k * 2 < len(data):
        k *= 2
    if m <= k:
        return [*ref_subproof(m, data[:k], b), ref_root(data[k:])]
    return [*ref_subproof(m - k, data[k:], False), ref_root(data[:k])]


def _data(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") + b"leaf" for i in range(n)]


# -- published vectors ---------------------------------------------------------------------

def test_roots_match_the_published_vectors() -> None:
    assert EMPTY_ROOT.hex() == ROOTS[0]
    for n in range(len(LEAVES) + 1):
        assert root_hash(HASHES[:n]).hex() == ROOTS[n]
        assert ref_root(LEAVES[:n]).hex() == ROOTS[n]


def test_inclusion_proofs_match_the_published_vectors() -> None:
    for (index, size), expected in INCLUSION.items():
        proof = inclusion_proof(HASHES[:size], index)
        assert [p.hex() for p in proof] == expected
        assert verify_inclusion(HASHES[index], index, size, proof, bytes.fromhex(ROOTS[size]))


def test_consistency_proofs_match_the_published_vectors() -> None:
    for (first, second), expected in CONSISTENCY.items():
        proof = consistency_proof(HASHES[:second], first)
        assert [p.hex() for p in proof] == expected
        assert verify_consistency(first, second, bytes.fromhex(ROOTS[first]), bytes.fromhex(ROOTS[second]), proof)


def test_every_proof_of_small_trees_matches_the_reference() -> None:
    for n in range(1, 34):
        data = _data(n)
        hashes = [leaf_hash(d) for d in data]
        root = root_hash(hashes)
        assert root == ref_root(data)
        for i in range(n):
            proof = inclusion_proof(hashes, i)
            assert proof == ref_path(i, data)
            assert verify_inclusion(hashes[i], i, n, proof, root)
        for m in range(1, n + 1):
            proof = consistency_proof(hashes, m)
            assert proof == (ref_subproof(m, data, True) if m < n else [])
            assert verify_consistency(m, n, root_hash(hashes[:m]), root, proof)


# -- properties over random sizes ----------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 700), data=st.data())
def test_inclusion_property(size: int, data: st.DataObject) -> None:
    hashes = [leaf_hash(d) for d in _data(size)]
    root = root_hash(hashes)
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(hashes, index)
    assert verify_inclusion(hashes[index], index, size, proof, root)
    # Anything else fails: another index, another size, another leaf, a changed path.
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
        assert not verify_inclusion(hashes[index], other, size, proof, root)
        assert not verify_inclusion(hashes[other], index, size, proof, root)
    # (The size is not always bound by the path alone: a tree head signs it with the root.)
    assert not verify_inclusion(hashes[index], index, size, proof, leaf_hash(b"another root"))
    if proof:
        position = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[position] = bytes(32)
        assert not verify_inclusion(hashes[index], index, size, bad, root)
        assert not verify_inclusion(hashes[index], index, size, proof[:-1], root)
    assert not verify_inclusion(hashes[index], index, size, [*proof, bytes(32)], root)


@settings(max_examples=150, deadline=None)
@given(second=st.integers(1, 700), data=st.data())
def test_consistency_property(second: int, data: st.DataObject) -> None:
    hashes = [leaf_hash(d) for d in _data(second)]
    first = data.draw(st.integers(1, second))
    first_root, second_root = root_hash(hashes[:first]), root_hash(hashes)
    proof = consistency_proof(hashes, first)
    assert verify_consistency(first, second, first_root, second_root, proof)
    if first < second:
        # A rewritten history (one old leaf changed) cannot be shown consistent.
        forged = list(hashes)
        victim = data.draw(st.integers(0, first - 1))
        forged[victim] = leaf_hash(b"rewritten")
        assert not verify_consistency(first, second, first_root, root_hash(forged), proof)
        assert not verify_consistency(first, second, root_hash(forged[:first]), second_root, proof)
        position = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[position] = bytes(32)
        assert not verify_consistency(first, second, first_root, second_root, bad)


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 90), min_size=1, max_size=5))
def test_compact_range_gives_every_root(sizes: list[int]) -> None:
    hashes = [leaf_hash(d) for d in _data(sum(sizes))]
    compact = CompactRange()
    done = 0
    for batch in sizes:
        for h in hashes[done : done + batch]:
            compact.append(h)
        done += batch
        assert compact.root() == root_hash(hashes[:done])
        # What the log stores between two runs gives the same tree back.
        compact = CompactRange.from_bytes(compact.size, compact.to_bytes())


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 300), data=st.data())
def test_the_cached_tree_gives_the_same_proofs(size: int, data: st.DataObject) -> None:
    from broker.audit.merkle import MerkleTree

    hashes = [leaf_hash(d) for d in _data(size)]
    tree = MerkleTree(hashes)
    smaller = data.draw(st.integers(1, size))
    index = data.draw(st.integers(0, smaller - 1))
    first = data.draw(st.integers(1, smaller))
    assert tree.root(smaller) == root_hash(hashes[:smaller])
    assert tree.inclusion_proof(index, smaller) == inclusion_proof(hashes[:smaller], index)
    assert tree.consistency_proof(first, smaller) == consistency_proof(hashes[:smaller], first)
