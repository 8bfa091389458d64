"""The ledger: every run's trades, rounds, rejections and gaps kept in a database.

The fleet's services write records to the run's stream on the broker
(:mod:`gridfleet.platform.records`, :mod:`gridfleet.platform.responses`, the coordinator);
:mod:`.writer` copies them into the database at least once and idempotently; :mod:`.store`
opens the database (SQLite by default, PostgreSQL by URL), migrates it and reads it back for
``gridfleet runs`` and ``gridfleet export``. docs/ledger.md has the schema.
"""
