"""The `gateway` command: what an operator types, one module per command group.

`main` (the parser, `run`, `check`, `explain`, the spool and ticket commands; the console script
`gateway = gateway.cli.main:main`), `tokens` (API tokens), `billing` (bundles, ledger, export) and
`privacy` (`purge` and `erase`). Thin: parses arguments and calls the owners.
"""
