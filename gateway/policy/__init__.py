"""Policy: the support contract as pure functions and values. Never touches storage or stages.

`plans` (plan order, channel entitlement, SLA targets, the ceiling on lifts), `routing` (which
queue a ticket lands in), `calendars` (business hours), `escalation` (which escalations are due)
and `directory` (who a sender is, and on which plan).
"""
