"""Intake: where an acknowledged message is kept until a worker has made it a ticket.

`spool` (the durable queue every channel writes to before it acknowledges), `blobs` (raw messages
and attachments, content-addressed) and `faults` (named crash points for the fault-injection
tests). Imports nothing from stages, policy or storage.
"""
