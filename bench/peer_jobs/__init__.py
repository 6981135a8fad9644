"""The same no-op job for each peer a user might pick instead of Offload, each run in its own
virtualenv (bench/peers.py makes them): Dramatiq, RQ and arq. Every module has `publish(n)`
(run as `python -m bench.peer_jobs.<peer> publish N`) and the job itself, which records its
finish time with one RPUSH on FINISHED_KEY, since none of them keeps a finish time Offload's
drain could read the same way. Only the peer's own library and redis-py are imported here."""

FINISHED_KEY = "bench:finished"
QUEUE = "bench"
