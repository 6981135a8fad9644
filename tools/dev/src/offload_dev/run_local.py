"""`make run`: Redis, the API, a worker, the notifier and Flower on this machine, no Docker.

Redis runs outside the process manager and stops last, so workers that stop on Ctrl-C can
still hand their unfinished tasks back to it. Its data (append-only) survives restarts.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from pathlib import Path

import honcho.manager
from honcho.environ import parse_procfile

from offload_core.logs import Redactor
from offload_dev.redis_server import RedisServer, free_port, port_is_free

ROOT = Path(__file__).resolve().parents[4]
STATE = ROOT / ".run"
# Local workers get this long to finish tasks on Ctrl-C before handing them back; the
# process manager waits longer than that before it kills anything.
SOFT_SHUTDOWN_SECONDS = 10
honcho.manager.KILL_WAIT = SOFT_SHUTDOWN_SECONDS + 15


def _credential(name: str, make: str = "") -> str:
    """A development secret kept in .run/ so it stays the same across runs."""
    path = STATE / name
    if not path.exists():
        path.write_text(make or secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _port(preferred: int) -> int:
    return preferred if port_is_free(preferred) else free_port()


def main() -> int:
    STATE.mkdir(exist_ok=True)
    redis_server = None
    redis_url = os.environ.get("OFFLOAD_REDIS_URL")
    if not redis_url:
        redis_server = RedisServer(_port(6379), STATE / "redis", persistent=True).start()
        redis_url = redis_server.url
    api_key = os.environ.get("OFFLOAD_API_KEYS", "").split(",")[0] or _credential(
        "api-key", "dev-" + secrets.token_urlsafe(24)
    )
    flower_auth = os.environ.get("FLOWER_BASIC_AUTH") or f"offload:{_credential('flower-password')}"
    api_port, flower_port = _port(8000), _port(5555)
    # The worker and the notifier run side by side here, so each needs its own metrics port.
    worker_metrics_port = _port(9808)
    notifier_metrics_port = _port(9809)

    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OFFLOAD_ENVIRONMENT": os.environ.get("OFFLOAD_ENVIRONMENT", "development"),
        "OFFLOAD_REDIS_URL": redis_url,
        "OFFLOAD_API_KEYS": os.environ.get("OFFLOAD_API_KEYS") or api_key,
        "OFFLOAD_API_PORT": str(api_port),
        "OFFLOAD_WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS": str(SOFT_SHUTDOWN_SECONDS),
        "OFFLOAD_WORKER_METRICS_HOST": "127.0.0.1",
        "WORKER_METRICS_PORT": str(worker_metrics_port),
        "NOTIFIER_METRICS_PORT": str(notifier_metrics_port),
        # The processes write into the process manager's pipe, not a terminal: say which format.
        "OFFLOAD_LOG_FORMAT": os.environ.get("OFFLOAD_LOG_FORMAT") or ("text" if sys.stdout.isatty() else "json"),
        "FLOWER_BASIC_AUTH": flower_auth,
        "FLOWER_PORT": str(flower_port),
        "OFFLOAD_STATE": str(STATE),
        "PYTHONUNBUFFERED": "1",
    }
    user, _, password = flower_auth.partition(":")
    print(
        f"""
  Offload is starting (Ctrl-C stops everything; running jobs finish or go back to their queue)

  API        http://127.0.0.1:{api_port}          docs: http://127.0.0.1:{api_port}/docs
  API key    {api_key}
  Flower     http://127.0.0.1:{flower_port}          user {user}, password {password}
  Metrics    http://127.0.0.1:{api_port}/metrics  (API and queue depths)
             http://127.0.0.1:{worker_metrics_port}/metrics  (worker)
             http://127.0.0.1:{notifier_metrics_port}/metrics  (notifier)
  Redis      {Redactor([])(redis_url)}

  Try:  curl -s -X POST http://127.0.0.1:{api_port}/v1/jobs/echo \\
          -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\
          -d '{{"message": "hello", "sleep_ms": 2000, "queue": "high"}}'
""",
        flush=True,
    )

    manager = honcho.manager.Manager()
    procfile = parse_procfile((ROOT / "Procfile").read_text())
    for name, command in procfile.processes.items():
        manager.add_process(name, command, env={**os.environ, **env}, cwd=str(ROOT))
    try:
        manager.loop()
    finally:
        # The manager handles Ctrl-C itself; ignore repeats while Redis stops last.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if redis_server is not None:
            redis_server.stop()
    # Stopped by Ctrl-C or SIGTERM (130, 143) is a normal end of a local run.
    return 0 if manager.returncode in (None, 130, 143) else manager.returncode


if __name__ == "__main__":
    sys.exit(main())
