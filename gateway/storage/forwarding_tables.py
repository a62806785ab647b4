"""Tables of forwarding into existing help desks: outbound webhook deliveries.

Shares `Base` with gateway.storage.models (imported at its end so Alembic sees every table).
"""

from __future__ import annotations

from gateway.storage.models import Base

__all__ = ["Base"]
