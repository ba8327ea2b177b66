"""The local OpenAI-compatible server: FastAPI routes on the shared engine (no Qt).

``config`` (what to bind, keys, limits), ``security`` (the key check and the body limit),
``schemas`` (OpenAI's request bodies, turned into the engine's sampling), ``bridge`` (the shared
engine's events as an async stream), ``routes`` (the endpoints), ``request_log`` (what the
Server page and the benchmark read), ``runner`` (uvicorn on a thread, started and stopped).
"""
