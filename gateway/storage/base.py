"""The declarative base every table shares, and the one timestamp type.

Owns `Base` (with the constraint naming convention Alembic's migrations rely on) and
`UTCDateTime`. Imports nothing of the gateway: gateway.storage.models and each feature's table
module (agent, billing, forwarding) build on it, and models registers them all.
"""

from __future__ import annotations

from sqlalchemy import DateTime, MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


UTCDateTime = DateTime(timezone=True)
