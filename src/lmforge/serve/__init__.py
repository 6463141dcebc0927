"""Serving: an OpenAI-compatible API over a continuous-batching scheduler, and a web UI.

    schemas.py    request bodies → validated requests (OpenAI fields + our extensions)
    slots.py      KV-cache slots as active / cached / free, longest-prefix reuse, LRU eviction
    scheduler.py  the thread that prefills new sequences and decodes all active ones together
    metrics.py    counters and gauges in the Prometheus text format
    app.py        the FastAPI routes, errors in OpenAI's format, server-sent events
    client.py     `lmforge chat --api URL`
    commands.py   `lmforge serve`
"""
