"""What a flow run uses around its tasks: the run's configuration, its logger, its artifacts."""
