"""Reliability: the oracle ledger, the invariant checker (I1-I7 of reliability.md 4.1),
the deterministic fault-matrix pass and the seeded chaos runner (``python -m tests.chaos``)."""
