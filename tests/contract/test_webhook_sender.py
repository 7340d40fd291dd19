"""HttpWebhookSender against a real HTTP receiver on 127.0.0.1, and the host policy."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from _proxy import running_proxy
from standardwebhooks.webhooks import Webhook

from foreman_adapters.aiohttp_transport import EnvironmentProxies
from foreman_adapters.webhooks import (
    KEPT_RESPONSE_BYTES,
    AllowedAddressResolver,
    HttpWebhookSender,
    WebhookHostPolicy,
    WebhookUrlRefused,
    webhook_http_client,
)
from foreman_core.signing import verify_signature

pytestmark = pytest.mark.anyio

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
EVENT_ID = "01JQ7ZK8E6W3V5N4M2P1R0S9TA"
BODY = json.dumps({"type": "job.state_changed", "event_id": EVENT_ID, "state": "queued"}).encode()


class FakeClock:
    """Real time at the start, then moved only by the test."""

    def __init__(self) -> None:
        self.current = datetime.now(UTC).replace(microsecond=0)

    def now(self) -> datetime:
        """The fake now."""
        return self.current


@dataclass
class Request:
    """What the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


class Receiver(ThreadingHTTPServer):
    """A webhook receiver whose answer depends on the request path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.requests: list[Request] = []
        self.answers = dict(ANSWERS)
        self.release = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:
        """A client closing a kept-alive connection (or cutting an answer short) is normal."""

    def url(self, path: str) -> str:
        """An absolute URL of this receiver."""
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class ReceiverHandler(BaseHTTPRequestHandler):
    """Records each POST and answers as its path says."""

    server: Receiver
    protocol_version = "HTTP/1.1"  # keeps connections open between requests

    def do_POST(self) -> None:
        """Answer a webhook."""
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        port = self.client_address[1]
        self.server.requests.append(Request(self.path, dict(self.headers.items()), body, port))
        if self.path == "/hang":
            self.server.release.wait(timeout=10)
        status, headers = self.server.answers.get(self.path, (204, {}))
        answer = b"x" * 4 * KEPT_RESPONSE_BYTES if self.path == "/chatty" else b"thanks"
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


ANSWERS: dict[str, tuple[int, dict[str, str]]] = {
    "/ok": (200, {}),
    "/accepted": (202, {}),
    "/fail": (500, {}),
    "/busy": (503, {"Retry-After": "7"}),
    "/bad-retry-after": (503, {"Retry-After": "soon"}),
    "/redirect": (307, {"Location": "/ok"}),
    "/moved": (301, {"Location": "/ok"}),
    "/chatty": (200, {}),
}


TLS = Path(__file__).parent / "tls"
"""A self-signed certificate for 127.0.0.1, trusted by nobody but the test that says so."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver serving in a thread for the test's duration."""
    yield from serving(Receiver())


@pytest.fixture
def tls_receiver() -> Iterator[Receiver]:
    """A receiver on HTTPS with the self-signed certificate."""
    server = Receiver()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(TLS / "localhost.crt", TLS / "localhost.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    yield from serving(server)


def serving(server: Receiver) -> Iterator[Receiver]:
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(params=["httpx", "foreman"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """A plain httpx client (ignoring the environment's proxies), or the one foreman sends
    with (AiohttpTransport)."""
    client = httpx.AsyncClient(trust_env=False) if request.param == "httpx" else None
    async with client or webhook_http_client() as chosen:
        yield chosen


@pytest.fixture
def clock() -> FakeClock:
    """A clock near real time, so the Standard Webhooks library accepts its timestamps."""
    return FakeClock()


async def test_a_signed_delivery_verifies_with_standard_webhooks_and_with_foreman(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    sender = HttpWebhookSender(http, SECRET, clock)

    result = await sender.send(receiver.url("/ok"), EVENT_ID, BODY)

    assert (result.ok, result.status) == (True, 200)
    [request] = receiver.requests
    assert request.body == BODY
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "foreman-webhooks"
    assert headers["webhook-id"] == EVENT_ID
    assert headers["webhook-timestamp"] == str(int(clock.now().timestamp()))
    assert Webhook(SECRET).verify(request.body, request.headers) == json.loads(BODY)
    assert verify_signature(SECRET, request.headers, request.body)
    assert "X-Foreman-Signature" in request.headers  # spelled as documented, for naive receivers
    foreman_only = {"X-Foreman-Signature": headers["x-foreman-signature"]}
    assert verify_signature(SECRET, foreman_only, request.body)


async def test_each_attempt_is_signed_afresh_under_the_same_webhook_id(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    sender = HttpWebhookSender(http, "plain secret", clock)

    await sender.send(receiver.url("/fail"), EVENT_ID, BODY)
    clock.current += timedelta(seconds=2)
    await sender.send(receiver.url("/ok"), EVENT_ID, BODY)

    first, second = (r.headers for r in receiver.requests)
    assert first["webhook-id"] == second["webhook-id"] == EVENT_ID
    assert int(second["webhook-timestamp"]) == int(first["webhook-timestamp"]) + 2
    assert first["webhook-signature"] != second["webhook-signature"]
    library = Webhook(base64.b64encode(b"plain secret").decode())
    for request in receiver.requests:
        library.verify(request.body, request.headers, json_parse=False)


async def test_without_a_secret_nothing_is_signed(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    result = await HttpWebhookSender(http, None, clock).send(receiver.url("/ok"), EVENT_ID, BODY)

    assert result.ok
    names = {name.lower() for name in receiver.requests[0].headers}
    assert names.isdisjoint({"x-foreman-signature", "webhook-id", "webhook-signature"})


async def test_deliveries_to_one_receiver_reuse_its_connection(
    receiver: Receiver, clock: FakeClock
) -> None:
    async with webhook_http_client() as http:
        sender = HttpWebhookSender(http, SECRET, clock)
        results = [await sender.send(receiver.url(path), EVENT_ID, BODY) for path in ANSWERS]

    assert [r.status for r in results] == [status for status, _ in ANSWERS.values()]
    assert len({r.client_port for r in receiver.requests}) == 1


async def test_a_long_answer_is_cut_off_and_the_next_delivery_still_goes(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    sender = HttpWebhookSender(http, SECRET, clock)

    chatty = await sender.send(receiver.url("/chatty"), EVENT_ID, BODY)
    after = await sender.send(receiver.url("/ok"), EVENT_ID, BODY)

    assert (chatty.ok, after.ok) == (True, True)
    assert [r.path for r in receiver.requests] == ["/chatty", "/ok"]


async def test_https_receivers_are_verified_and_ssl_cert_file_adds_a_trusted_ca(
    tls_receiver: Receiver, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = tls_receiver.url("/ok").replace("http://", "https://")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    async with webhook_http_client() as http:
        untrusted = await HttpWebhookSender(http, SECRET, clock).send(url, EVENT_ID, BODY)
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS / "localhost.crt"))
    async with webhook_http_client() as http:
        trusted = await HttpWebhookSender(http, SECRET, clock).send(url, EVENT_ID, BODY)

    assert not untrusted.ok
    assert "certificate" in (untrusted.error or "").lower()
    assert (trusted.ok, trusted.status) == (True, 200)
    assert [r.path for r in tls_receiver.requests] == ["/ok"]


async def test_any_2xx_is_a_delivery(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    result = await HttpWebhookSender(http, None, clock).send(
        receiver.url("/accepted"), EVENT_ID, BODY
    )

    assert (result.ok, result.status, result.error) == (True, 202, None)


@pytest.mark.parametrize("path", ["/redirect", "/moved"])
async def test_a_redirect_is_a_failure_and_is_not_followed(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock, path: str
) -> None:
    async with httpx.AsyncClient(trust_env=False, follow_redirects=True) as following_client:
        sender = HttpWebhookSender(following_client, SECRET, clock)
        result = await sender.send(receiver.url(path), EVENT_ID, BODY)

    assert not result.ok
    assert result.status == ANSWERS[path][0]
    assert "redirects are not followed" in (result.error or "")
    assert [r.path for r in receiver.requests] == [path]


async def test_a_server_error_is_a_failure(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    result = await HttpWebhookSender(http, SECRET, clock).send(
        receiver.url("/fail"), EVENT_ID, BODY
    )

    assert (result.ok, result.status, result.retry_after) == (False, 500, None)
    assert result.error == "receiver answered 500"


async def test_retry_after_in_seconds_is_parsed(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    result = await HttpWebhookSender(http, SECRET, clock).send(
        receiver.url("/busy"), EVENT_ID, BODY
    )

    assert (result.ok, result.status, result.retry_after) == (False, 503, 7.0)


async def test_retry_after_as_an_http_date_is_parsed_against_the_clock(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    in_two_minutes = format_datetime(clock.now() + timedelta(minutes=2), usegmt=True)
    receiver.answers["/busy-until"] = (429, {"Retry-After": in_two_minutes})

    result = await HttpWebhookSender(http, SECRET, clock).send(
        receiver.url("/busy-until"), EVENT_ID, BODY
    )

    assert (result.ok, result.status, result.retry_after) == (False, 429, 120.0)


async def test_an_unparseable_retry_after_is_ignored(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    result = await HttpWebhookSender(http, SECRET, clock).send(
        receiver.url("/bad-retry-after"), EVENT_ID, BODY
    )

    assert (result.ok, result.status, result.retry_after) == (False, 503, None)


async def test_a_refused_connection_is_a_failure_not_an_exception(
    http: httpx.AsyncClient, clock: FakeClock
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    result = await HttpWebhookSender(http, SECRET, clock).send(
        f"http://127.0.0.1:{closed_port}/hook", EVENT_ID, BODY
    )

    assert (result.ok, result.status) == (False, None)
    assert (result.error or "").startswith("could not reach receiver")


async def test_a_receiver_that_never_answers_times_out(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    sender = HttpWebhookSender(http, SECRET, clock, timeout=0.2)

    result = await sender.send(receiver.url("/hang"), EVENT_ID, BODY)

    assert (result.ok, result.status) == (False, None)
    assert "timed out" in (result.error or "")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://127.0.0.1/hook", "must use http or https"),
        ("not a url", "must use http or https"),
        ("http:///no-host", "has no host"),
        ("http://127.0.0.1:99999/hook", "is malformed"),
        ("http://[::1/hook", "is malformed"),
    ],
)
async def test_a_bad_url_is_a_failure_even_without_a_policy(
    http: httpx.AsyncClient, clock: FakeClock, url: str, reason: str
) -> None:
    result = await HttpWebhookSender(http, SECRET, clock).send(url, EVENT_ID, BODY)

    assert (result.ok, result.status) == (False, None)
    assert reason in (result.error or "")


async def test_the_sender_delivers_to_an_allowed_network(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    sender = HttpWebhookSender(http, SECRET, clock, WebhookHostPolicy("127.0.0.0/8"))

    result = await sender.send(receiver.url("/ok"), EVENT_ID, BODY)

    assert result.ok


async def test_the_sender_refuses_a_host_the_policy_does_not_allow(
    receiver: Receiver, http: httpx.AsyncClient, clock: FakeClock
) -> None:
    sender = HttpWebhookSender(http, SECRET, clock, WebhookHostPolicy("hooks.example.com"))

    result = await sender.send(receiver.url("/ok"), EVENT_ID, BODY)

    assert not result.ok
    assert "FOREMAN_WEBHOOK_ALLOWED_HOSTS" in (result.error or "")
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        (None, "http://10.0.0.1/hook"),
        ("", "https://hooks.example.com/hook"),
        ("127.0.0.0/8", "http://127.0.0.1:9000/hook"),
        ("127.0.0.0/8", "http://[::ffff:127.0.0.1]/hook"),
        ("::1", "http://[::1]:8000/hook"),
        ("Hooks.Example.com", "https://hooks.example.com./hook"),
        ("10.1.2.3, hooks.example.com", "https://HOOKS.example.com/hook"),
        ("127.0.0.0/8, ::1", "http://localhost:9000/hook"),
    ],
)
async def test_the_policy_allows(allowed: str | None, url: str) -> None:
    await WebhookHostPolicy(allowed).check(url)


@pytest.mark.parametrize(
    ("allowed", "url", "reason"),
    [
        ("127.0.0.0/8", "http://10.0.0.1/hook", "resolves to 10.0.0.1"),
        ("127.0.0.0/8", "http://169.254.169.254/latest", "resolves to 169.254.169.254"),
        ("::1", "http://127.0.0.1/hook", "resolves to 127.0.0.1"),
        ("hooks.example.com", "http://127.0.0.1/hook", "is not listed"),
        ("hooks.example.com", "https://other.example.com/hook", "is not listed"),
        ("hooks.example.com", "https://hooks.example.com.evil.test/hook", "is not listed"),
        (None, "ftp://hooks.example.com/hook", "must use http or https"),
        (None, "file:///etc/passwd", "must use http or https"),
        (None, "http://", "has no host"),
        (None, "http://127.0.0.1:99999/hook", "is malformed"),
    ],
)
async def test_the_policy_refuses(allowed: str | None, url: str, reason: str) -> None:
    with pytest.raises(WebhookUrlRefused, match=reason):
        await WebhookHostPolicy(allowed).check(url)


def test_a_refused_url_is_a_value_error() -> None:
    assert issubclass(WebhookUrlRefused, ValueError)


# -- the allow-list at connection time --------------------------------------------------------


async def addresses(resolver: AllowedAddressResolver, host: str) -> list[str]:
    return [found["host"] for found in await resolver.resolve(host, 80, socket.AF_UNSPEC)]


async def test_the_resolver_keeps_only_allowed_addresses() -> None:
    allowing = AllowedAddressResolver(WebhookHostPolicy("127.0.0.0/8"))
    refusing = AllowedAddressResolver(WebhookHostPolicy("10.0.0.0/8"))
    naming = AllowedAddressResolver(WebhookHostPolicy("localhost"))
    assert await addresses(allowing, "localhost") == ["127.0.0.1"]
    with pytest.raises(OSError, match="no address allowed"):
        await addresses(refusing, "localhost")
    assert "127.0.0.1" in await addresses(naming, "localhost")


async def test_a_host_that_resolves_elsewhere_at_connection_time_is_not_reached(
    receiver: Receiver, clock: FakeClock
) -> None:
    # The sender's own check is left out (policy=None), as if the name had resolved to an
    # allowed address for it and to this one a moment later: the connection still refuses.
    url = receiver.url("/ok").replace("127.0.0.1", "localhost")
    async with webhook_http_client(WebhookHostPolicy("10.0.0.0/8")) as http:
        result = await HttpWebhookSender(http, SECRET, clock).send(url, EVENT_ID, BODY)
    async with webhook_http_client(WebhookHostPolicy("127.0.0.0/8")) as http:
        allowed = await HttpWebhookSender(http, SECRET, clock).send(url, EVENT_ID, BODY)

    assert not result.ok
    assert "no address allowed" in (result.error or "")
    assert allowed.ok
    assert [r.path for r in receiver.requests] == ["/ok"]


# -- proxies ------------------------------------------------------------------------------------


@pytest.fixture
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The environment without any proxy variable; the test sets the ones it needs."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def test_a_delivery_goes_through_the_proxy_http_proxy_names_with_its_credentials(
    receiver: Receiver, clock: FakeClock, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    async with running_proxy("hook-user:hook-password") as proxy:
        no_proxy_variables.setenv("HTTP_PROXY", proxy.url)
        async with webhook_http_client() as http:
            result = await HttpWebhookSender(http, SECRET, clock).send(
                receiver.url("/ok"), EVENT_ID, BODY
            )

    assert (result.ok, result.status) == (True, 200)
    assert proxy.request_lines == [f"POST {receiver.url('/ok')} HTTP/1.1"]
    credentials = base64.b64encode(b"hook-user:hook-password")
    assert b"\r\nProxy-Authorization: Basic %s\r\n" % credentials in proxy.heads[0]
    assert [r.body for r in receiver.requests] == [BODY]


async def test_an_https_delivery_is_tunnelled_through_the_proxy_https_proxy_names_with_credentials(
    tls_receiver: Receiver, clock: FakeClock, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    no_proxy_variables.setenv("SSL_CERT_FILE", str(TLS / "localhost.crt"))
    url = tls_receiver.url("/ok").replace("http://", "https://")
    async with running_proxy("tunnel-user:tunnel-password") as proxy:
        no_proxy_variables.setenv("HTTPS_PROXY", proxy.url)
        async with webhook_http_client() as http:
            result = await HttpWebhookSender(http, SECRET, clock).send(url, EVENT_ID, BODY)

    assert (result.ok, result.status) == (True, 200)
    assert proxy.request_lines == [f"CONNECT 127.0.0.1:{tls_receiver.server_address[1]} HTTP/1.1"]
    credentials = base64.b64encode(b"tunnel-user:tunnel-password")
    assert b"\r\nProxy-Authorization: Basic %s\r\n" % credentials in proxy.heads[0]
    assert [r.path for r in tls_receiver.requests] == ["/ok"]


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
async def test_a_receiver_no_proxy_lists_is_reached_directly(
    receiver: Receiver, clock: FakeClock, no_proxy_variables: pytest.MonkeyPatch, no_proxy: str
) -> None:
    async with running_proxy() as proxy:
        no_proxy_variables.setenv("HTTP_PROXY", proxy.url)
        no_proxy_variables.setenv("NO_PROXY", no_proxy)
        async with webhook_http_client() as http:
            result = await HttpWebhookSender(http, SECRET, clock).send(
                receiver.url("/ok"), EVENT_ID, BODY
            )

    assert result.ok
    assert proxy.heads == []
    assert [r.path for r in receiver.requests] == ["/ok"]


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypassed"),
    [
        ("hooks.example.com", 443, "example.com", True),
        ("hooks.example.com", 443, ".example.com", True),
        ("badexample.com", 443, "example.com", False),
        ("hooks.example.com", 8443, "hooks.example.com:8443", True),
        ("hooks.example.com", 443, "hooks.example.com:8443", False),
        ("::1", 80, "[::1]", True),
        ("::1", 80, "[::1]:81", False),
        ("10.0.0.1", 80, " 10.0.0.2 , 10.0.0.1 ", True),
        ("10.0.0.1", 80, "", False),
    ],
)
def test_no_proxy_entries_name_hosts_domains_and_ports(
    host: str, port: int, no_proxy: str, bypassed: bool
) -> None:
    proxies = EnvironmentProxies(
        {"http": "http://proxy:3128", "https": "http://proxy:3128", "no": no_proxy}
    )
    url = httpx.URL(scheme="https", host=host, port=port, path="/hook")
    assert (proxies.for_url(url) is None) is bypassed


async def test_a_proxy_that_cannot_be_reached_is_a_failed_delivery(
    receiver: Receiver, clock: FakeClock, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    no_proxy_variables.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port}")
    async with webhook_http_client() as http:
        result = await HttpWebhookSender(http, SECRET, clock).send(
            receiver.url("/ok"), EVENT_ID, BODY
        )

    assert (result.ok, result.status) == (False, None)
    assert (result.error or "").startswith("could not reach receiver")
    assert receiver.requests == []


async def test_the_proxy_itself_is_held_to_the_allow_list(
    receiver: Receiver, clock: FakeClock, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    async with running_proxy() as proxy:
        no_proxy_variables.setenv("HTTP_PROXY", proxy.url.replace("127.0.0.1", "localhost"))
        results = []
        for allowed in ("10.0.0.0/8", "127.0.0.0/8"):
            async with webhook_http_client(WebhookHostPolicy(allowed)) as http:
                sender = HttpWebhookSender(http, SECRET, clock)
                results.append(await sender.send(receiver.url("/ok"), EVENT_ID, BODY))

    refused, allowed_through = results
    assert not refused.ok
    assert "no address allowed" in (refused.error or "")
    assert allowed_through.ok
    assert proxy.request_lines == [f"POST {receiver.url('/ok')} HTTP/1.1"]
