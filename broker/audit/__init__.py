"""The audit log: typed events, a Merkle tree over them, signed checkpoints, proofs."""
