"""Privacy: who did what, how long data is kept, and forgetting a person on request.

`audit` (every agent and admin action, appended in the caller's transaction), `retention`
(`gateway purge`: what a closed ticket no longer needs, and the only code that deletes blobs) and
`erasure` (`gateway erase`: one person's personal data removed).
"""
