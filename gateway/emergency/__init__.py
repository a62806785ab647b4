"""Emergency support and its billing (issue 7): who may ask, what it costs, what was agreed.

`rules` (the one pure rule of emergency support), `sender_auth` (is an email's sender who its
`From:` says — the evidence a charge rests on), `after_hours` (the after-hours flag, explained),
`holds` (the database side: requests, holds, releases, incidents, links) and `ledger` (incidents,
charges, prepaid bundles, credits and the monthly export).
"""
