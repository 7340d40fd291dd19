"""foreman's settings, read once from the environment and validated whole.

Every variable is optional. A value that does not parse raises `ConfigError`, whose message
names the variable and the value, so `foreman serve` can refuse to start with one clear line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "warning", "error")
DURATION_EXAMPLES = "examples: 500ms, 30s, 5m, 1h30m"
SIZE_EXAMPLES = "examples: 1048576, 512KiB, 32MiB, 1GB"
OLLAMA_TLS_VARIABLES = (
    "FOREMAN_OLLAMA_CA_FILE",
    "FOREMAN_OLLAMA_CLIENT_CERT",
    "FOREMAN_OLLAMA_CLIENT_KEY",
)
"""The files for an Ollama behind HTTPS: its CA, foreman's client certificate and key."""
MAX_INT = 2**63 - 1
"""Largest integer setting: they are stored in SQLite, whose integers are 64-bit."""

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_BARE_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b|b)?", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


class ConfigError(ValueError):
    """A configuration variable has a value foreman cannot use; the message names both."""


def parse_duration(text: str) -> timedelta:
    """A Go-style duration (`500ms`, `1h30m`, `1.5h`) or a bare number of seconds."""
    text = text.strip()
    if _BARE_NUMBER.fullmatch(text):
        seconds = float(text)
    else:
        position, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != position:
                break
            seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
            position = match.end()
        if not text or position != len(text):
            raise ValueError(f"invalid duration {text!r}")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # also infinity: more than timedelta holds
        raise ValueError(f"invalid duration {text!r} (too long)") from None


def parse_size(text: str) -> int:
    """A byte count: a bare number of bytes or a number with a unit (`512KiB`, `32MiB`, `1GB`)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r}")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    try:
        return int(number * _SIZE_UNITS[unit])
    except OverflowError:  # infinity
        raise ValueError(f"invalid size {text!r}") from None


def parse_listen_addr(text: str) -> tuple[str, int]:
    """`host:port` (IPv6 hosts in brackets) into the host and a port in 0-65535."""
    host, sep, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"invalid listen address {text!r} (expected host:port)")
    return host, int(port_text)


def parse_http_url(text: str) -> str:
    """An http(s) URL with a host, without its trailing slash."""
    url = text.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError(f"invalid URL {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid URL {text!r} (expected http://host[:port])")
    return url.rstrip("/")


def without_credentials(url: str) -> str:
    """`url` with any `user:password@` removed, for showing it where secrets must not go."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def parse_token_list(text: str) -> tuple[str, ...]:
    """Comma-separated values, blanks and surrounding spaces dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything foreman is configured with: a field per FOREMAN_* variable (operations.md)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    ollama_url: str = "http://127.0.0.1:11434"
    ollama_token: str | None = None
    auth_tokens: tuple[str, ...] = ()
    db_path: str = "./foreman.db"
    poll_interval: timedelta = timedelta(seconds=30)
    max_attempts: int = 3
    job_ttl: timedelta = timedelta(hours=24)
    webhook_secret: str | None = None
    embed_model: str | None = None
    public_url: str = "http://127.0.0.1:8080"
    max_queue: int = 1000
    max_wait: timedelta = timedelta(minutes=10)
    log_level: str = "info"
    max_body_size: int = 32 * 1024**2
    webhook_allowed_hosts: tuple[str, ...] | None = None
    shutdown_grace: timedelta = timedelta(seconds=30)
    ollama_ca_file: str | None = None
    ollama_client_cert: str | None = None
    ollama_client_key: str | None = None

    @property
    def listen_addr(self) -> str:
        """The `host:port` foreman binds."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate every FOREMAN_* variable; raises `ConfigError` on the first bad one."""
        env, defaults = _Environment(environ), cls()
        ca_file, client_cert, client_key = _ollama_tls_files(env)
        host, port = env.read("FOREMAN_LISTEN_ADDR", parse_listen_addr, ("127.0.0.1", 8080))
        default_public = "http://" + (f"[{host}]" if ":" in host else host) + f":{port}"
        return cls(
            listen_host=host,
            listen_port=port,
            ollama_url=env.read("FOREMAN_OLLAMA_URL", parse_http_url, defaults.ollama_url),
            ollama_token=env.text("FOREMAN_OLLAMA_TOKEN"),
            auth_tokens=env.read("FOREMAN_AUTH_TOKEN", parse_token_list, ()),
            db_path=env.text("FOREMAN_DB_PATH") or defaults.db_path,
            poll_interval=env.duration(
                "FOREMAN_POLL_INTERVAL", defaults.poll_interval, positive=True
            ),
            max_attempts=env.integer("FOREMAN_MAX_ATTEMPTS", defaults.max_attempts, minimum=1),
            job_ttl=env.duration("FOREMAN_JOB_TTL", defaults.job_ttl, positive=True),
            webhook_secret=env.text("FOREMAN_WEBHOOK_SECRET"),
            embed_model=env.text("FOREMAN_EMBED_MODEL"),
            public_url=env.read("FOREMAN_PUBLIC_URL", parse_http_url, default_public),
            max_queue=env.integer("FOREMAN_MAX_QUEUE", defaults.max_queue, minimum=1),
            max_wait=env.duration("FOREMAN_MAX_WAIT", defaults.max_wait, positive=True),
            log_level=env.read("FOREMAN_LOG_LEVEL", _parse_log_level, defaults.log_level),
            max_body_size=env.size("FOREMAN_MAX_BODY_SIZE", defaults.max_body_size),
            webhook_allowed_hosts=env.read("FOREMAN_WEBHOOK_ALLOWED_HOSTS", _parse_host_list, None),
            shutdown_grace=env.duration("FOREMAN_SHUTDOWN_GRACE", defaults.shutdown_grace),
            ollama_ca_file=ca_file,
            ollama_client_cert=client_cert,
            ollama_client_key=client_key,
        )


def _ollama_tls_files(env: _Environment) -> tuple[str | None, str | None, str | None]:
    """FOREMAN_OLLAMA_CA_FILE, _CLIENT_CERT and _CLIENT_KEY, each file loaded once now so that
    a bad one is a one-line error at start-up, not a failure at the first request."""
    ca_file, cert, key = (env.text(name) for name in OLLAMA_TLS_VARIABLES)
    if key is not None and cert is None:
        raise ConfigError(
            f"FOREMAN_OLLAMA_CLIENT_KEY: {key!r} is set without FOREMAN_OLLAMA_CLIENT_CERT"
        )
    if ca_file is None and cert is None:
        return None, None, None
    # Imported only when TLS to Ollama is configured: the client commands never need aiohttp.
    from foreman_adapters.aiohttp_transport import client_tls

    try:
        client_tls(ca_file=ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(f"FOREMAN_OLLAMA_CA_FILE: cannot load {ca_file!r}: {exc}") from None
    try:
        client_tls(client_cert=cert, client_key=key)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        key_file = "" if key is None else f" with the key {key!r}"
        raise ConfigError(
            f"FOREMAN_OLLAMA_CLIENT_CERT: cannot load {cert!r}{key_file}: {exc}"
        ) from None
    return ca_file, cert, key


def _parse_log_level(text: str) -> str:
    level = text.strip().lower()
    if level == "warn":
        level = "warning"
    if level not in LOG_LEVELS:
        raise ValueError(f"invalid log level {text!r} (one of: {', '.join(LOG_LEVELS)})")
    return level


def _parse_host_list(text: str) -> tuple[str, ...]:
    hosts = tuple(host.lower() for host in parse_token_list(text))
    if not hosts:
        raise ValueError(f"invalid host list {text!r}")
    return hosts


class _Environment:
    """Typed reads of optional variables; a blank value counts as unset."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "")
        return value if value.strip() else None

    def read(self, name: str, parse: Callable[[str], T], default: T) -> T:
        value = self.text(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None

    def duration(self, name: str, default: timedelta, *, positive: bool = False) -> timedelta:
        def parse(text: str) -> timedelta:
            try:
                value = parse_duration(text)
            except ValueError:
                raise ValueError(f"invalid duration {text!r} ({DURATION_EXAMPLES})") from None
            if positive and value <= timedelta(0):
                raise ValueError(f"invalid duration {text!r} (must be greater than 0)")
            return value

        return self.read(name, parse, default)

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        def parse(text: str) -> int:
            digits = text.strip()
            if not (digits.isascii() and digits.isdigit()) or not minimum <= int(digits) <= MAX_INT:
                raise ValueError(
                    f"invalid value {text!r} (expected an integer from {minimum} to 2**63-1)"
                )
            return int(digits)

        return self.read(name, parse, default)

    def size(self, name: str, default: int) -> int:
        def parse(text: str) -> int:
            try:
                value = parse_size(text)
            except ValueError:
                raise ValueError(f"invalid size {text!r} ({SIZE_EXAMPLES})") from None
            if value < 1:
                raise ValueError(f"invalid size {text!r} (must be at least 1 byte)")
            return value

        return self.read(name, parse, default)
