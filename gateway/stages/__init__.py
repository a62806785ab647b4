"""One module per pipeline stage, in the order a message meets them (see gateway.pipeline)."""
