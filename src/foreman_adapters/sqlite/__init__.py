"""foreman's durable job store on SQLite: `SqliteJobStore`.

The modules: `store` (the class, its connection, lock and transactions), `rows` (the `jobs`
table's row mapping), `queue` (the scheduler's questions, asked of the partial indexes),
`outbox` (the webhook outbox table), `schema` (tables, indexes and migrations) and `checkpoint`
(the background WAL checkpointer, ADR 0014).
"""

from foreman_adapters.sqlite.store import SqliteJobStore

__all__ = ["SqliteJobStore"]
