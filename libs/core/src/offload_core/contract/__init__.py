"""What the API and the workers agree on: queues, payloads, Offload's own job types and
the registry that loads every job type (the public SDK itself is offload_core.sdk)."""
