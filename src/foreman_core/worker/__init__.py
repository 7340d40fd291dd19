"""The worker: the single loop that runs chat and generate jobs on the target, one at a time.

- `loop.py` — `Worker`: claims the scheduler's choice, starts its attempt and watches it to
  its end; starts a sync job at once when it finds the loop resting (ADR 0015).
- `attempt.py` — one attempt: the load, the request, the answer relayed to the job's
  `WaitingClient` (sync job) or kept (async job); retries and failures; an interrupted
  attempt put in order.
- `records.py` — the worker's writes to the store, and the recovery of jobs left running
  there by a crash, a stop or a write the store refused.
- `health.py` — whether the target answers: queued work waits while it does not (ADR 0011),
  and a request it has gone silent on is given up (ADR 0012).
"""

from foreman_core.worker.loop import Worker

__all__ = ["Worker"]
