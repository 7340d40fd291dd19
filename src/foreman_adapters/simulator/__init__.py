"""A simulated Ollama with one GPU: an ASGI app for `foreman demo`, the tests and benchmarks.

It speaks Ollama's native API as `shared/spec/ollama-wire.md` describes it: `GET/HEAD /`,
`/api/version`, `/api/tags`, `/api/ps`, `/api/show`, `/api/chat`, `/api/generate`,
`/api/embed`, `/api/embeddings`, `/api/pull`, `/api/push`, `/api/create`, `/api/copy` and
`DELETE /api/delete`, `HEAD/POST /api/blobs/sha256:<digest>` (uploads are hashed as they
stream, only digests and sizes kept), with Ollama's exact content types, status codes and error
texts. Replies are deterministic: `sim.reply(model, prompt)` is the text a model answers (for
chat, `prompt` is the last message's content), so tests can compare content.

It speaks Ollama's compatibility layers too, built as Ollama builds them — a middleware in front
of a native handler (see `dialect.py`), so a dialect request loads, swaps, holds and fails
exactly as the native one: OpenAI's `/v1/chat/completions`, `/v1/completions`, `/v1/responses`,
`/v1/embeddings`, `GET /v1/models` and `/v1/models/{model}`, and Anthropic's `/v1/messages`.
They take no load options and no keep_alive (Ollama maps none), so a dialect request wants its
model loaded with the defaults.

The GPU (see `gpu.py`): one chat/generate model resident at a time; another model, or the same
one with other load options (`num_ctx`, …), waits for the GPU to be idle and swaps in after
`load_delay` seconds (counted in `swaps`). Embedding models stay resident beside it and never
disturb it. `keep_alive` is honoured (default 5 minutes, 0 unloads, negative is forever).

Usage:
    sim = SimulatedOllama(load_delay=0, ttft=0, token_delay=0, tokens=8)   # fast, for tests
    sim = SimulatedOllama.realistic()                                      # for demos
    httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://ollama")
    async with serve_simulator(sim) as running: ...                        # a real socket
    python -m foreman_adapters.simulator --port 0 [--load-delay S --ttft S --token-delay S
        --tokens N]   # prints "listening on http://127.0.0.1:PORT" when ready

`httpx.ASGITransport` buffers whole responses and raises app exceptions to the caller; to see
streaming liveness, mid-stream breaks or client disconnects, serve on a socket.

Counters: `swaps`, `max_inflight_generate`, `max_inflight_embed`, `inflight_generate`, `held`,
`aborted` (generations cut short by a client disconnect), `requests` (a Counter by path),
`blobs` (uploaded blob sizes by Ollama's file name, `sha256-<hex>`),
`generations` (GenerationRecord: model, requested name, kind, outcome done|aborted|failed,
prompt, in order) and `completed` (models of the done ones, in order).
`await sim.wait_for(predicate)` waits for a state (all changes wake it).

Faults (they apply to chat and generate, and the dialect routes over them, only; `down` to all):
    drop_connections(n)     reset the connection before answering (under ASGITransport the app
                            raises SimulatedReset, a ConnectionResetError)
    fail_next(n, status, body, retry_after=None)     answer an HTTP error instead
    fail_mid_stream(n, after_chunks=1, error=None)   streamed replies break after that many
                            lines: the connection closes mid-body (ASGI: SimulatedReset), or
                            with `error` the stream ends with Ollama's in-band
                            `{"error": …}` line (status stays 200)
    down() / up()           every Ollama route resets its connection (ASGI: SimulatedRefusal)
    hold() / release()      chat/generate requests (loads too) wait once their model holds
                            the GPU (in flight, counted in `held`); requests for another
                            model wait for the GPU meanwhile; `await sim.wait_for_held(n)`;
                            `release(count=n)` lets only n more requests pass (`passes` in
                            the stats counts those left) and goes on holding
    reset()                 initial models, no blobs, empty GPU, no faults, counters at zero
Through a dialect route a fault looks as it would through Ollama's writers: an HTTP failure
becomes the dialect's error object (same status); an in-band error line is read as an empty
chunk, so the stream just ends, without `[DONE]`, `response.completed` or `message_stop`.

Control API over HTTP (never counted or faulted), answering the stats as JSON:
    GET  /_sim/stats
    POST /_sim/faults    {"drop_connections": n,
                          "fail_next": {"count": n, "status": 503, "body": "…", "retry_after": 2},
                          "fail_mid_stream": {"count": n, "after_chunks": 1, "error": null},
                          "down": true|false}
    POST /_sim/hold, /_sim/release {"count": n} (optional), /_sim/reset
    POST /_sim/config    {"load_delay": s, "ttft": s, "token_delay": s, "tokens": n}
"""

from foreman_adapters.simulator.app import GenerationRecord, SimulatedOllama
from foreman_adapters.simulator.catalog import DEFAULT_MODELS, SimulatedModel
from foreman_adapters.simulator.server import RunningSimulator, main, serve_simulator
from foreman_adapters.simulator.wire import SimulatedRefusal, SimulatedReset

__all__ = [
    "DEFAULT_MODELS",
    "GenerationRecord",
    "RunningSimulator",
    "SimulatedModel",
    "SimulatedOllama",
    "SimulatedRefusal",
    "SimulatedReset",
    "main",
    "serve_simulator",
]
