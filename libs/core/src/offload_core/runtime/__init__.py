"""What runs jobs in a worker process: the Celery app and its task class, the wire format,
the transport, orphan recovery, probes and metrics."""
