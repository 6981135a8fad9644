"""Acme's Offload jobs: ``acme.primes`` (CPU, reports progress) and ``acme.fetch`` (outbound HTTP)."""
