"""Storage: the ticket database (SQLAlchemy 2, Alembic). Only `persist` and the CLI's explicit
admin commands write here; channels never do."""
