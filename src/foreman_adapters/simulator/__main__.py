"""`python -m foreman_adapters.simulator --port 0`: serve a simulated Ollama."""

import contextlib

from foreman_adapters.simulator.server import main

with contextlib.suppress(KeyboardInterrupt):
    main()
