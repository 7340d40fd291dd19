"""Webhook HTTP: the sender behind the WebhookSender port, and the receiver-host guard."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from foreman_adapters.aiohttp_transport import AiohttpTransport, EnvironmentProxies
from foreman_core.ports import Clock, DeliveryResult
from foreman_core.signing import sign_headers

DELIVERY_TIMEOUT = 10.0
"""Seconds one delivery attempt may take in all: connect, send, and the response's headers."""
USER_AGENT = "foreman-webhooks"
KEPT_RESPONSE_BYTES = 64 * 1024
"""A receiver's answer up to this size is read to its end, so that its connection can carry the
next delivery; a longer one is cut off and its connection closed."""
ALLOWED_HOSTS_VARIABLE = "FOREMAN_WEBHOOK_ALLOWED_HOSTS"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookUrlRefused(ValueError):
    """A webhook URL that foreman will not call: wrong scheme, no host, or a host not allowed."""


class WebhookHostPolicy:
    """Which hosts webhooks may reach (an SSRF guard), from FOREMAN_WEBHOOK_ALLOWED_HOSTS.

    `allowed` is a comma-separated list of hostnames and IP networks (CIDRs or single
    addresses). A URL passes when its hostname is listed, or when every address its host
    resolves to lies in a listed network. None or an empty list allows every host. The
    scheme must be http or https either way.
    """

    def __init__(self, allowed: str | None) -> None:
        self._hostnames: set[str] = set()
        self._networks: list[IpNetwork] = []
        for entry in (allowed or "").split(","):
            entry = entry.strip()
            if not entry:
                continue
            try:
                self._networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self._hostnames.add(_canonical_host(entry))

    @property
    def restricts(self) -> bool:
        """Whether any host is refused at all."""
        return bool(self._hostnames or self._networks)

    def trusts_any_address_of(self, host: str) -> bool:
        """Whether `host` passes whatever it resolves to: no restriction, or a listed name."""
        return not self.restricts or _canonical_host(host) in self._hostnames

    async def check(self, url: str) -> None:
        """Raise `WebhookUrlRefused` unless foreman may POST to `url`."""
        host, port = _host_and_port(url)
        if self.trusts_any_address_of(host):
            return
        if not self._networks:
            raise WebhookUrlRefused(
                f"webhook host {host!r} is not listed in {ALLOWED_HOSTS_VARIABLE}"
            )
        for address in await _resolve(host, port):
            if not self.permits(address):
                raise WebhookUrlRefused(
                    f"webhook host {host!r} resolves to {address}, outside {ALLOWED_HOSTS_VARIABLE}"
                )

    def permits(self, address: IpAddress) -> bool:
        """Whether `address` lies in a listed network."""
        candidates: list[IpAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            candidate in network
            for candidate in candidates
            for network in self._networks
            if candidate.version == network.version
        )


def validate_webhook_url(url: str) -> None:
    """Raise `WebhookUrlRefused` unless `url` is an http(s) URL with a host and a valid port."""
    _host_and_port(url)


def _canonical_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _host_and_port(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlRefused(f"webhook URL {url!r} is malformed: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookUrlRefused(f"webhook URL {url!r} must use http or https")
    if not parts.hostname:
        raise WebhookUrlRefused(f"webhook URL {url!r} has no host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def _resolve(host: str, port: int) -> list[IpAddress]:
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlRefused(f"webhook host {host!r} cannot be resolved: {exc}") from None
    addresses = [_ip_literal(str(info[4][0])) for info in infos]
    found = [address for address in addresses if address is not None]
    if not found:
        raise WebhookUrlRefused(f"webhook host {host!r} resolves to no IP address")
    return found


def _ip_literal(host: str) -> IpAddress | None:
    try:
        # A scoped IPv6 address (fe80::1%eth0) is judged by its address part.
        return ipaddress.ip_address(_canonical_host(host).split("%", 1)[0])
    except ValueError:
        return None


class AllowedAddressResolver(AbstractResolver):
    """Looks up a receiver's host for the connection itself and keeps only the addresses the
    policy permits, so that the addresses checked are the addresses connected to: a name that
    resolves to an allowed address for the check and to an internal one a moment later (DNS
    rebinding) cannot get past the allow-list. The resolver of the webhook transport's
    connections (aiohttp's `TCPConnector(resolver=...)`), a proxy's included; an IP address in
    a URL is not looked up, and the sender's own check judges it."""

    def __init__(self, policy: WebhookHostPolicy) -> None:
        self._policy = policy
        self._lookup: aiohttp.ThreadedResolver | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The permitted addresses of `host`; OSError when there are none."""
        if self._lookup is None:  # made here: it keeps the running event loop
            self._lookup = aiohttp.ThreadedResolver()
        found = await self._lookup.resolve(host, port, family)
        if self._policy.trusts_any_address_of(host):
            return found
        permitted = [entry for entry in found if _permitted(self._policy, entry["host"])]
        if not permitted:
            raise OSError(
                errno.EACCES,
                f"webhook host {host!r} resolves to no address allowed by {ALLOWED_HOSTS_VARIABLE}",
            )
        return permitted

    async def close(self) -> None:
        """Nothing to release: lookups run on the event loop's default executor."""


def _permitted(policy: WebhookHostPolicy, address: str) -> bool:
    literal = _ip_literal(address)
    return literal is not None and policy.permits(literal)


def webhook_http_client(policy: WebhookHostPolicy | None = None) -> httpx.AsyncClient:
    """The client deliveries go out on: keeps connections to receivers for reuse, never follows
    redirects, goes through the proxy that HTTP_PROXY, HTTPS_PROXY and NO_PROXY name for a
    receiver (read now), and connects only to addresses `policy` permits (ADR 0017)."""
    resolver = AllowedAddressResolver(policy) if policy is not None and policy.restricts else None
    transport = AiohttpTransport(resolver=resolver, proxies=EnvironmentProxies.from_environment())
    return httpx.AsyncClient(transport=transport, follow_redirects=False)


class HttpWebhookSender:
    """Implements WebhookSender over httpx: one signed POST per attempt, no redirects.

    Each attempt gets a fresh `webhook-timestamp` and signatures; `webhook-id` is the event id,
    the same on every retry. Only the status and headers of the response matter; its body is
    read (up to `KEPT_RESPONSE_BYTES`) and dropped.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        secret: str | None,
        clock: Clock,
        policy: WebhookHostPolicy | None = None,
        *,
        timeout: float = DELIVERY_TIMEOUT,
    ) -> None:
        self._http = http
        self._secret = secret or None
        self._clock = clock
        self._policy = policy
        self._timeout = timeout

    async def send(self, url: str, event_id: str, body: bytes) -> DeliveryResult:
        """POST `body` to `url`, signed; never raises for a failed delivery."""
        try:
            async with asyncio.timeout(self._timeout):
                validate_webhook_url(url)
                if self._policy is not None:
                    await self._policy.check(url)
                return await self._post(url, self._headers(event_id, body), body)
        except WebhookUrlRefused as exc:
            return DeliveryResult(ok=False, error=str(exc))
        except TimeoutError:
            return DeliveryResult(ok=False, error=f"receiver timed out after {self._timeout:g}s")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return DeliveryResult(ok=False, error=_describe_http_error(exc))
        except Exception as exc:
            # The port promises no exception for a failed delivery, whatever the network stack
            # raised; the dispatcher records this as a failed attempt.
            return DeliveryResult(ok=False, error=f"delivery failed: {type(exc).__name__}: {exc}")

    def _headers(self, event_id: str, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if self._secret is not None:
            timestamp = int(self._clock.now().timestamp())
            headers.update(sign_headers(self._secret, event_id, body, timestamp))
        return headers

    async def _post(self, url: str, headers: dict[str, str], body: bytes) -> DeliveryResult:
        async with self._http.stream(
            "POST",
            url,
            content=body,
            headers=headers,
            follow_redirects=False,
            timeout=self._timeout,
        ) as response:
            await _drain(response)
            status = response.status_code
            if 200 <= status < 300:
                return DeliveryResult(ok=True, status=status)
            return DeliveryResult(
                ok=False,
                status=status,
                retry_after=self._retry_after(response.headers.get("Retry-After")),
                error=_describe_status(status),
            )

    def _retry_after(self, value: str | None) -> float | None:
        """Seconds the receiver asked us to wait: delta-seconds or an HTTP date."""
        if value is None:
            return None
        value = value.strip()
        if value.isascii() and value.isdigit():
            return float(value)
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - self._clock.now()).total_seconds())


async def _drain(response: httpx.Response) -> None:
    """Read a short answer to its end (its connection is then reused); stop at a long one."""
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received > KEPT_RESPONSE_BYTES:
            return


def _describe_status(status: int) -> str:
    if 300 <= status < 400:
        return f"receiver answered {status}; redirects are not followed"
    return f"receiver answered {status}"


def _describe_http_error(exc: Exception) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return f"receiver timed out: {detail}"
    if isinstance(exc, httpx.TransportError):
        return f"could not reach receiver: {detail}"
    return f"delivery failed: {detail}"
