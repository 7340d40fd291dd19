"""Webhooks end to end: a real `foreman serve` posting signed events to a real local receiver.

The dispatcher retries after 1, 2, 4… seconds, so some of these tests take a few seconds; they
wait on what the receiver recorded, never on the clock.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from e2e_processes import LOCAL, ForemanServer, wait_until
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from foreman_core.signing import verify_signature

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ForemanServer]

SECRET = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, made up").decode()
WAIT = 30.0
"""Seconds to wait for deliveries: enough for the retries at 1, 2 and 4 s, and a restart."""


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got, and what it answered."""

    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        """The JSON event."""
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request; it can fail on purpose."""

    def __init__(self, port: int = 0, failures: int = 0) -> None:
        self.failures = failures
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._record(dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                """Quiet: pytest shows what matters."""

        return Handler

    def _record(self, headers: dict[str, str], body: bytes) -> int:
        with self._lock:
            status = 500 if self.failures > 0 else 200
            self.failures -= 1
            self.deliveries.append(Delivery(headers, body, status))
            return status

    def received(self) -> list[Delivery]:
        """Every request so far, in the order they arrived."""
        with self._lock:
            return list(self.deliveries)

    def accepted(self) -> list[Delivery]:
        """The requests answered 2xx."""
        return [d for d in self.received() if d.status == 200]

    def wait_for_accepted(self, count: int, timeout: float = WAIT) -> list[Delivery]:
        """Until `count` requests were answered 2xx; those requests."""
        wait_until(lambda: len(self.accepted()) >= count, timeout, f"{count} deliveries")
        return self.accepted()

    def stop(self) -> None:
        """Stop listening; the port is free again."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Start receivers: `receivers(port=0, failures=0)`; all are stopped after the test."""
    started: list[Receiver] = []

    def start(port: int = 0, failures: int = 0) -> Receiver:
        receiver = Receiver(port, failures)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        if receiver._thread.is_alive():
            receiver.stop()


def submit(server: ForemanServer, prompt: str, webhook: str) -> str:
    """Queue a chat job that reports to `webhook`; its id."""
    response = LOCAL.post(
        f"{server.url}/jobs",
        json={
            "model": "llama3.2",
            "messages": [{"role": "user", "content": prompt}],
            "state_webhook_url": webhook,
        },
    )
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def wait_until_done(server: ForemanServer, job_id: str) -> dict[str, Any]:
    """Poll the job until it has finished; the job object."""

    def finished() -> dict[str, Any] | None:
        job = LOCAL.get(f"{server.url}/jobs/{job_id}").json()
        return job if job["state"] in ("done", "failed", "cancelled") else None

    return wait_until(finished, WAIT, f"job {job_id} to finish")


def transitions(deliveries: list[Delivery], job_id: str) -> list[tuple[str | None, str]]:
    """The job's (previous_state, state) pairs, once per event however often it came."""
    seen: dict[str, tuple[str | None, str]] = {}
    for delivery in deliveries:
        event = delivery.event
        if event["job_id"] == job_id:
            seen.setdefault(event["event_id"], (event["previous_state"], event["state"]))
    return list(seen.values())


LOADING_LIFECYCLE = [
    (None, "queued"),
    ("queued", "loading"),
    ("loading", "working"),
    ("working", "done"),
]
RESIDENT_LIFECYCLE = [(None, "queued"), ("queued", "working"), ("working", "done")]


def test_events_follow_the_lifecycle_in_order_and_verify_both_signatures(
    foreman_server: StartServer, receivers: Callable[..., Receiver]
) -> None:
    server = foreman_server({"FOREMAN_WEBHOOK_SECRET": SECRET})
    receiver = receivers()
    cold = submit(server, "first: the model must load", receiver.url)
    job = wait_until_done(server, cold)
    deliveries = receiver.wait_for_accepted(4)
    assert transitions(deliveries, cold) == LOADING_LIFECYCLE
    warm = submit(server, "second: the model is resident", receiver.url)
    wait_until_done(server, warm)
    deliveries = receiver.wait_for_accepted(7)
    assert transitions(deliveries, warm) == RESIDENT_LIFECYCLE

    done = next(d.event for d in deliveries if d.event["state"] == "done")
    assert done["type"] == "job.state_changed"
    assert (done["job_id"], done["model"], done["attempts"]) == (cold, "llama3.2:latest", 1)
    assert done["result"] == job["result"]
    assert done["artifacts"] == job["artifacts"]
    assert done["error"] is None
    before_done = [d.event for d in deliveries if d.event["state"] != "done"]
    assert all(event["result"] is None for event in before_done)

    standard = Webhook(SECRET)
    for delivery in deliveries:
        assert standard.verify(delivery.body, delivery.headers) == delivery.event
        assert delivery.headers["webhook-id"] == delivery.event["event_id"]
        assert verify_signature(SECRET, delivery.headers, delivery.body)
        foreman_only = {"X-Foreman-Signature": delivery.headers["X-Foreman-Signature"]}
        assert verify_signature(SECRET, foreman_only, delivery.body)
    tampered = deliveries[0].body.replace(b"queued", b"done")
    assert not verify_signature(SECRET, deliveries[0].headers, tampered)
    with pytest.raises(WebhookVerificationError):
        standard.verify(tampered, deliveries[0].headers)


def test_a_receiver_that_fails_twice_gets_the_event_with_the_same_id(
    foreman_server: StartServer, receivers: Callable[..., Receiver]
) -> None:
    server = foreman_server({"FOREMAN_WEBHOOK_SECRET": SECRET})
    receiver = receivers(failures=2)
    job_id = submit(server, "retry my webhook", receiver.url)
    deliveries = receiver.wait_for_accepted(4)
    assert transitions(deliveries, job_id) == LOADING_LIFECYCLE
    first_event = [d for d in receiver.received() if d.event["state"] == "queued"]
    assert [d.status for d in first_event] == [500, 500, 200]
    assert len({d.headers["webhook-id"] for d in first_event}) == 1
    assert len({d.body for d in first_event}) == 1
    # Every attempt is signed afresh, and every one verifies.
    for delivery in first_event:
        assert verify_signature(SECRET, delivery.headers, delivery.body)


def test_a_failing_receiver_never_changes_the_job(
    foreman_server: StartServer, receivers: Callable[..., Receiver]
) -> None:
    server = foreman_server()
    receiver = receivers(failures=1_000)
    job_id = submit(server, "my receiver is broken", receiver.url)
    job = wait_until_done(server, job_id)
    assert (job["state"], job["attempts"], job["error"]) == ("done", 1, None)
    assert job["result"]["message"]["content"]
    wait_until(lambda: len(receiver.received()) >= 2, WAIT, "a retried delivery")
    # In order per job: only the first event is tried while it keeps failing.
    assert {d.event["state"] for d in receiver.received()} == {"queued"}
    assert httpx.get(f"{server.url}/jobs/{job_id}").json() == job


def test_an_event_pending_across_a_restart_is_delivered_after_it(
    foreman_server: StartServer, receivers: Callable[..., Receiver]
) -> None:
    server = foreman_server({"FOREMAN_WEBHOOK_SECRET": SECRET})
    receiver = receivers()
    port = receiver.port
    receiver.stop()
    job_id = submit(server, "deliver me later", receiver.url)
    job = wait_until_done(server, job_id)
    assert server.stop() == 0
    revived = receivers(port=port)
    server.restart()
    deliveries = revived.wait_for_accepted(4)
    assert transitions(deliveries, job_id) == LOADING_LIFECYCLE
    done = next(d.event for d in deliveries if d.event["state"] == "done")
    assert done["result"] == job["result"]
    for delivery in deliveries:
        assert verify_signature(SECRET, delivery.headers, delivery.body)
