"""Tables of emergency billing: incidents, the append-only ledger, prepaid bundles.

Shares `Base` with gateway.storage.models (imported at its end so Alembic sees every table).
"""

from __future__ import annotations

from gateway.storage.models import Base

__all__ = ["Base"]
