"""Outbound: everything the gateway sends, delivered at least once.

`outbox` (the gate every automated message passes: drafting, loop and rate rules), `mail_sender`
(outbox rows over the SMTP relay), `twilio_sender` (SMS rows and voicemail transcriptions through
Twilio), `forwarding` and `forwarding_sender` (signed webhooks into existing help desks) and
`escalation_scheduler` (records each due escalation once and tells its step).
"""
