"""Channels: each one validates, spools and acknowledges — and does nothing else.

A channel MUST acknowledge (SMTP 250, IMAP flag/move, HTTP 2xx) only after `Spool.enqueue`
returned; MUST answer our own faults with "try again later" (SMTP 4xx, HTTP 503); MUST NOT parse
beyond what validation needs, classify, or write tickets.
"""
