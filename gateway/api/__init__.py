"""The agents' HTTP API on the `[api]` address: FastAPI app, token auth, routes (see app.py).

Owns nothing itself; each module says what it owns."""
