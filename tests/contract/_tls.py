"""Certificates made for one test with `trustme`: a CA, a server certificate for 127.0.0.1 and
a client certificate, written to files the way FOREMAN_OLLAMA_CA_FILE, _CLIENT_CERT and
_CLIENT_KEY name them."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass
class Pki:
    """The files, and a server context that asks for a client certificate signed by the CA."""

    server: ssl.SSLContext
    ca_file: str
    client_cert: str
    client_key: str
    client_cert_and_key: str


def make_pki(directory: Path) -> Pki:
    """A fresh CA and its certificates, written into `directory`."""
    ca = trustme.CA()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca.configure_trust(server)
    server.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no handshake
    client = ca.issue_cert("foreman@example.com")
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "cert", "key", "both")}
    ca.cert_pem.write_to_path(paths["ca"])
    client.cert_chain_pems[0].write_to_path(paths["cert"])
    client.private_key_pem.write_to_path(paths["key"])
    client.private_key_and_cert_chain_pem.write_to_path(paths["both"])
    return Pki(server, paths["ca"], paths["cert"], paths["key"], paths["both"])
