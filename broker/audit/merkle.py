"""The Merkle tree of RFC 9162 §2.1: hashes, tree heads, inclusion and consistency proofs.

Pure functions over leaf hashes; no I/O. The hashing is RFC 9162's (the same as RFC 6962)::

    leaf hash  = SHA-256(0x00 || leaf)
    node hash  = SHA-256(0x01 || left || right)
    MTH({})    = SHA-256()                       (the empty tree)
    MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n]))  with k the largest power of two below n

Generation follows the recursive definitions of §2.1.3.1 (PATH) and §2.1.4.1 (PROOF,
SUBPROOF); verification follows the iterative algorithms of §2.1.3.2 and §2.1.4.2 step by
step, so that a reader can hold each against the RFC. A verifier in another language needs
only those two algorithms and SHA-256.

``CompactRange`` keeps what a log needs to extend its tree without reading old leaves: the
roots of the perfect subtrees that the binary decomposition of the size gives (at most 64).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "MerkleTree",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof was asked for sizes or indices that do not exist in the tree."""


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


Subtree = Callable[[int, int], bytes]  # MTH(D[lo:hi]) of some tree


def _mth_of(leaves: Sequence[bytes]) -> Subtree:
    def mth(lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 1:
            return leaves[lo]
        k = _split(n)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    return mth


def root_hash(leaves: Sequence[bytes]) -> bytes:
    """MTH over the given leaf hashes (RFC 9162 §2.1.1)."""
    if not leaves:
        return EMPTY_ROOT
    return _mth_of(leaves)(0, len(leaves))


def _path(m: int, mth: Subtree, lo: int, hi: int) -> list[bytes]:
    n = hi - lo
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, mth, lo, lo + k), mth(lo + k, hi)]
    return [*_path(m - k, mth, lo + k, hi), mth(lo, lo + k)]


def _subproof(m: int, mth: Subtree, lo: int, hi: int, complete: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if complete else [mth(lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, mth, lo, lo + k, complete), mth(lo + k, hi)]
    return [*_subproof(m - k, mth, lo + k, hi, False), mth(lo, lo + k)]


def _inclusion(mth: Subtree, index: int, size: int) -> list[bytes]:
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    return _path(index, mth, 0, size)


def _consistency(mth: Subtree, first: int, second: int) -> list[bytes]:
    if not 0 < first <= second:
        raise ProofError(f"no consistency proof from size {first} to size {second}")
    if first == second:
        return []
    return _subproof(first, mth, 0, second, True)


def inclusion_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 §2.1.3.1, for the tree of all ``leaves``."""
    return _inclusion(_mth_of(leaves), index, len(leaves))


def consistency_proof(leaves: Sequence[bytes], first: int) -> list[bytes]:
    """PROOF(first, D[n]) of RFC 9162 §2.1.4.1: the tree of size ``first`` is a prefix of
    the tree of all ``leaves``. Empty when both sizes are equal."""
    return _consistency(_mth_of(leaves), first, len(leaves))


class MerkleTree:
    """Every perfect subtree of a list of leaf hashes, computed once (about n hashes), so
    that each proof afterwards costs O(log² n) instead of O(n).

    The RFC's recursion only ever meets perfect subtrees aligned on their size (the split
    point is a multiple of every later split), which are exactly the nodes of these levels;
    the right edge of a size that is not a power of two is computed as the RFC says.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        levels = [list(leaves)]
        while len(levels[-1]) > 1:
            below = levels[-1]
            levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
        self.levels = levels
        self.size = len(leaves)

    def _mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n & (n - 1) == 0 and lo % n == 0:
            return self.levels[n.bit_length() - 1][lo // n]
        k = _split(n)
        return node_hash(self._mth(lo, lo + k), self._mth(lo + k, hi))

    def _check(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ProofError(f"the tree has {self.size} leaves, not {size}")

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check(size)
        return EMPTY_ROOT if size == 0 else self._mth(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        self._check(size)
        return _inclusion(self._mth, index, size)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        second = self.size if second is None else second
        self._check(second)
        return _consistency(self._mth, first, second)


def _lsb(value: int) -> bool:
    return bool(value & 1)


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``path`` prove that the leaf hash ``leaf`` is at ``index`` in
    the tree of ``tree_size`` leaves whose root is ``root``?"""
    if index < 0 or index >= tree_size:  # step 1
        return False
    if any(len(p) != HASH_SIZE for p in path) or len(leaf) != HASH_SIZE:
        return False
    fn, sn = index, tree_size - 1  # step 2
    r = leaf  # step 3
    for p in path:  # step 4
        if sn == 0:  # 4a
            return False
        if _lsb(fn) or fn == sn:  # 4b
            r = node_hash(p, r)
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1  # 4c
        sn >>= 1
    return sn == 0 and r == root  # step 5


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show that the tree of size ``first`` with root
    ``first_root`` is a prefix of the tree of size ``second`` with root ``second_root``?

    Equal sizes need an empty proof and equal roots; the empty tree is a prefix of any tree.
    """
    if first < 0 or second < first:
        return False
    if any(len(c) != HASH_SIZE for c in proof):
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    path = list(proof)
    if not path:  # step 1
        return False
    if first & (first - 1) == 0:  # step 2: first is an exact power of two
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1  # step 3
    if _lsb(fn):  # step 4
        while _lsb(fn):
            fn >>= 1
            sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:  # 6a
            return False
        if _lsb(fn) or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0  # step 7


class CompactRange:
    """The right edge of a tree: the roots of its perfect subtrees, largest (leftmost) first.

    Appending a leaf merges equal-sized subtrees the way binary addition carries, so the
    root of any size is computed from at most 64 stored hashes (a Merkle "frontier").
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != bin(size).count("1"):
            raise ValueError(f"a tree of size {size} has {bin(max(size, 0)).count('1')} subtree roots")
        self.size = size
        self.hashes = list(hashes)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash."""
        self.hashes.append(leaf)
        self.size += 1
        # Each trailing 1-bit of the old size is a subtree of the new leaf's size to merge with.
        carries = (self.size & -self.size).bit_length() - 1
        for _ in range(carries):
            right = self.hashes.pop()
            left = self.hashes.pop()
            self.hashes.append(node_hash(left, right))

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    def to_bytes(self) -> bytes:
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, size: int, packed: bytes) -> CompactRange:
        if len(packed) % HASH_SIZE:
            raise ValueError("a compact range is a whole number of hashes")
        return cls(size, [packed[i : i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE)])
