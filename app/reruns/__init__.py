"""Staff re-runs of a completed request: the request is sent to its connectors again."""
