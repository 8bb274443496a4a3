"""Reading the log's signed checkpoints, and building proofs against them.

A proof is always asked between sizes that have a signed checkpoint, so that a verifier
checks it against a tree head the broker signed. Hashes travel in standard base64, as in
RFC 9162's JSON.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.audit.merkle import MerkleTree, leaf_hash
from broker.audit.models import AuditCheckpoint, AuditEvent
from broker.audit.sequencer import CHECKPOINT_TYP, b64
from broker.errors import DamagedLog, InvalidRequest, NotFound

log = logging.getLogger("broker.audit")

__all__ = [
    "CHECKPOINT_TYP",
    "checkpoint_at",
    "checkpoint_json",
    "consistency",
    "inclusion",
    "latest_checkpoint",
    "load_tree",
]


def latest_checkpoint(session: Session) -> AuditCheckpoint | None:
    return session.scalars(
        select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1)
    ).first()


def checkpoint_at(session: Session, tree_size: int) -> AuditCheckpoint:
    checkpoint = session.get(AuditCheckpoint, tree_size)
    if checkpoint is None:
        raise NotFound(f"no signed checkpoint of tree size {tree_size}")
    return checkpoint


def checkpoint_json(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    """The signed checkpoint (a compact JWS, ``typ`` ``audit-checkpoint+jwt``) and what it says."""
    return {
        "tree_size": checkpoint.tree_size,
        "root_hash": b64(checkpoint.root_hash),
        "timestamp": checkpoint.issued_at.isoformat().replace("+00:00", "Z"),
        "signed": checkpoint.signed,
    }


def load_tree(session: Session, tree_size: int) -> MerkleTree:
    """The tree of the first ``tree_size`` leaves, from the stored commitments."""
    leaves = session.scalars(
        select(AuditEvent.commitment)
        .where(AuditEvent.leaf_index.is_not(None), AuditEvent.leaf_index < tree_size)
        .order_by(AuditEvent.leaf_index)
    ).all()
    if len(leaves) != tree_size or any(c is None for c in leaves):
        # Only a damaged log gets here: `broker audit verify` says where.
        log.error("audit log damaged: %d entries expected under checkpoint, %d found", tree_size, len(leaves))
        raise DamagedLog(f"the log does not hold the {tree_size} entries its checkpoint covers")
    return MerkleTree([leaf_hash(c) for c in leaves if c is not None])


def inclusion(session: Session, *, leaf_index: int, tree_size: int) -> dict[str, Any]:
    """RFC 9162 §2.1.3: the audit path of one leaf in the tree of a signed checkpoint."""
    checkpoint = checkpoint_at(session, tree_size)
    if not 0 <= leaf_index < tree_size:
        raise InvalidRequest(f"leaf_index: must be from 0 to {tree_size - 1}", field="leaf_index")
    tree = load_tree(session, tree_size)
    return {
        "leaf_index": leaf_index,
        "tree_size": tree_size,
        "leaf_hash": b64(tree.levels[0][leaf_index]),
        "inclusion_path": [b64(h) for h in tree.inclusion_proof(leaf_index)],
        "checkpoint": checkpoint_json(checkpoint),
    }


def consistency(session: Session, *, first: int, second: int) -> dict[str, Any]:
    """RFC 9162 §2.1.4: the tree of the first checkpoint is a prefix of the second's."""
    if not 0 < first <= second:
        raise InvalidRequest("first and second: 0 < first <= second", field="first")
    older, newer = checkpoint_at(session, first), checkpoint_at(session, second)
    tree = load_tree(session, second)
    return {
        "first": first,
        "second": second,
        "consistency_path": [b64(h) for h in tree.consistency_proof(first)],
        "first_checkpoint": checkpoint_json(older),
        "second_checkpoint": checkpoint_json(newer),
    }
