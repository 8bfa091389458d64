"""Frozen copies of the simulator's batch handler, state and events as they were before the
batch fast path and the column order book (commit 75f3691), kept as the reference that
``test_batch_fast.py`` compares the current code with. Not used by the package.

Changed on purpose since, as the spec of behaviour: the grid-fee rule in ``state_v1`` (a fee
change takes effect with the next slot's market, as in gsy-e)."""
