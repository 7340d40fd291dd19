"""`foreman serve` as a real process in front of the simulator, driven by Ollama's own clients:
the routes that never wait in the queue, auth, degraded mode, configuration errors, signals."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama
import pytest
from e2e_processes import LOCAL, ForemanServer, SimulatorProcess, free_port, wait_until
from langchain_ollama import OllamaEmbeddings

pytestmark = pytest.mark.e2e

StartServer = Callable[..., ForemanServer]
RunCli = Callable[..., subprocess.CompletedProcess[str]]

EMBEDDING_LENGTH = 384
"""all-minilm's vector length, as the simulator reports it."""


def test_ollama_client_lists_shows_and_reports_loaded_models(
    foreman_server: StartServer,
) -> None:
    server = foreman_server()
    client = ollama.Client(host=server.url)
    names = [model.model for model in client.list().models]
    assert "llama3.2:latest" in names
    assert client.ps().models == []
    shown = client.show("llama3.2")
    assert shown.details is not None
    assert shown.details.family == "llama"
    assert shown.modelinfo
    assert httpx.get(f"{server.url}/api/version").json() == {"version": "0.12.6"}


def test_embeddings_through_ollama_and_langchain(shared_server: ForemanServer) -> None:
    server = shared_server
    client = ollama.Client(host=server.url)
    embedded = client.embed(model="all-minilm", input=["first", "second"])
    assert [len(vector) for vector in embedded.embeddings] == [EMBEDDING_LENGTH] * 2
    legacy = client.embeddings(model="all-minilm", prompt="first")
    assert list(legacy.embedding) == pytest.approx(list(embedded.embeddings[0]))
    langchain = OllamaEmbeddings(model="all-minilm", base_url=server.url)
    documents = langchain.embed_documents(["first", "second"])
    assert documents == [pytest.approx(list(vector)) for vector in embedded.embeddings]
    assert langchain.embed_query("second") == pytest.approx(list(embedded.embeddings[1]))


def test_unknown_models_get_ollamas_own_404(shared_server: ForemanServer) -> None:
    client = ollama.Client(host=shared_server.url)
    with pytest.raises(ollama.ResponseError) as shown:
        client.show("nope")
    assert (shown.value.status_code, shown.value.error) == (404, "model 'nope' not found")
    with pytest.raises(ollama.ResponseError) as embedded:
        client.embed(model="nope", input="x")
    assert embedded.value.status_code == 404
    assert embedded.value.error == 'model "nope" not found, try pulling it first'


def test_pull_streams_progress_and_the_model_is_listed_after(shared_server: ForemanServer) -> None:
    client = ollama.Client(host=shared_server.url)
    statuses = [progress.status for progress in client.pull("phi3", stream=True)]
    assert statuses[-1] == "success"
    assert len(statuses) > 1
    assert "phi3:latest" in [model.model for model in client.list().models]


def test_embeddings_run_concurrently_at_the_target(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server()
    # A slow first load keeps every request at the target until all have arrived.
    simulator.configure(load_delay=1.0)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        requests = [
            http.build_request("POST", "/api/embed", json={"model": "all-minilm", "input": f"t{i}"})
            for i in range(4)
        ]
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(http.send, requests))
    assert [r.status_code for r in responses] == [200] * 4
    assert simulator.stats()["max_inflight_embed"] > 1


def test_auth_token_from_ollama_api_key_or_headers(
    foreman_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    server = foreman_server({"FOREMAN_AUTH_TOKEN": "s3cret,other"})
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=server.url).list()
    assert (refused.value.status_code, refused.value.error) == (401, "unauthorized")
    wrong = ollama.Client(host=server.url, headers={"Authorization": "Bearer nope"})
    with pytest.raises(ollama.ResponseError):
        wrong.list()
    by_header = ollama.Client(host=server.url, headers={"Authorization": "Bearer other"})
    assert by_header.list().models
    monkeypatch.setenv("OLLAMA_API_KEY", "s3cret")
    assert ollama.Client(host=server.url).list().models
    langchain = OllamaEmbeddings(
        model="all-minilm",
        base_url=server.url,
        client_kwargs={"headers": {"Authorization": "Bearer s3cret"}},
    )
    assert len(langchain.embed_query("hello")) == EMBEDDING_LENGTH
    health = httpx.get(f"{server.url}/healthz")
    assert health.status_code == 200
    assert httpx.get(f"{server.url}/").text == "Ollama is running"


def test_target_down_means_degraded_while_tags_are_still_served(
    foreman_server: StartServer, simulator: SimulatorProcess
) -> None:
    server = foreman_server({"FOREMAN_POLL_INTERVAL": "100ms"})
    client = ollama.Client(host=server.url)
    simulator.stop()

    def degraded() -> bool:
        return LOCAL.get(f"{server.url}/healthz").json()["degraded"] is True

    wait_until(degraded, 10, "foreman to notice the target is down")
    assert "llama3.2:latest" in [model.model for model in client.list().models]
    version = httpx.get(f"{server.url}/api/version")
    assert version.status_code == 502
    assert version.headers["content-type"].startswith("application/json")
    assert version.json()["error"]


def test_an_unreachable_target_at_start_still_serves_degraded(
    foreman_server: StartServer,
) -> None:
    server = foreman_server(target=f"http://127.0.0.1:{free_port()}")
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["status"] == "ok"
    assert health["degraded"] is True
    assert httpx.get(f"{server.url}/api/tags").json() == {"models": []}


def test_errors_foreman_makes_are_json(foreman_server: StartServer) -> None:
    server = foreman_server({"FOREMAN_MAX_BODY_SIZE": "1KiB"})
    missing = httpx.get(f"{server.url}/api/nothing")
    assert (missing.status_code, missing.json()) == (404, {"error": "not found"})
    wrong_method = httpx.delete(f"{server.url}/api/tags")
    assert (wrong_method.status_code, wrong_method.json()) == (405, {"error": "method not allowed"})
    malformed = httpx.post(f"{server.url}/api/show", content=b"{nope")
    assert malformed.status_code == 400
    assert "invalid" in malformed.json()["error"]
    too_big = httpx.post(f"{server.url}/api/embed", content=b"x" * 4096)
    assert (too_big.status_code, too_big.json()) == (413, {"error": "request body too large"})


def test_an_invalid_variable_makes_serve_exit_2_with_one_line(foreman_cli: RunCli) -> None:
    run = foreman_cli("serve", env={"FOREMAN_POLL_INTERVAL": "abc"})
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "FOREMAN_POLL_INTERVAL" in lines[0]
    assert "'abc'" in lines[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_shuts_down_cleanly_with_status_0(
    foreman_server: StartServer, sig: signal.Signals
) -> None:
    server = foreman_server()
    assert server.stop(sig) == 0
    assert "Traceback" not in server.log()


def test_a_database_that_cannot_be_opened_is_one_line_and_exit_1(
    foreman_cli: RunCli, tmp_path: Path
) -> None:
    unreachable = tmp_path / "missing-dir" / "foreman.db"
    run = foreman_cli(
        "serve", env={"FOREMAN_DB_PATH": str(unreachable), "FOREMAN_LISTEN_ADDR": "127.0.0.1:0"}
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(unreachable) in lines[0]
