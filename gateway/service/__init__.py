"""The service: the long-running daemon and what keeps it alive and observable.

`daemon` (start-up order, listeners, signals), `worker` (claims spool entries, runs the pipeline),
`runtime` (the reloadable configuration as one value), `health` and `metrics` (HTTP probes and
Prometheus), `http_server` (uvicorn inside the daemon's loop) and `notify` (systemd's protocol).
The top of the import graph: nothing below imports the service.
"""
