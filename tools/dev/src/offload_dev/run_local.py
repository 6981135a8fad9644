"""`make run`: Redis, the API, a worker, the notifier and Flower on this machine, no Docker,
plus a mail sink and a webhook receiver that print what the services deliver.

Redis runs outside the process manager and stops last, so workers that stop on Ctrl-C can
still hand their unfinished tasks back to it. Its data (append-only) survives restarts.
"""

from __future__ import annotations

import base64
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


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: "whsec_" + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _fresh_credential(name: str, value: str) -> str:
    """A development secret made for this run, written to .run/ for the developer to read."""
    path = STATE / name
    path.unlink(missing_ok=True)
    # Created owner-only, so the secret is never readable by others even for a moment.
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
        file.write(value + "\n")
    return value


def delivery_env(mail_port: int, webhooks_port: int, webhook_secrets: str) -> dict[str, str]:
    """Where the services deliver during `make run`: the local mail sink and webhook receiver.
    Loopback is exempt from the outbound rule that refuses private addresses, for this local run only."""
    return {
        "OFFLOAD_SMTP_HOST": "127.0.0.1",
        "OFFLOAD_SMTP_PORT": str(mail_port),
        "OFFLOAD_SMTP_SECURITY": "none",
        "OFFLOAD_WEBHOOK_SECRETS": webhook_secrets,
        "OFFLOAD_OUTBOUND_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "MAIL_PORT": str(mail_port),
        "WEBHOOKS_PORT": str(webhooks_port),
    }


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
    api_metrics_port = _port(9807)
    worker_metrics_port = _port(9808)
    notifier_metrics_port = _port(9809)
    # Fixed ports when free (1025 is the usual local SMTP sink's), so the README's commands work as written.
    mail_port, webhooks_port = _port(1025), _port(8025)
    webhook_secrets = os.environ.get("OFFLOAD_WEBHOOK_SECRETS")
    if webhook_secrets:
        (STATE / "webhook-secret").unlink(missing_ok=True)  # a stale one would mislead
    else:
        webhook_secrets = _fresh_credential("webhook-secret", new_webhook_secret())

    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OFFLOAD_ENVIRONMENT": os.environ.get("OFFLOAD_ENVIRONMENT", "development"),
        "OFFLOAD_REDIS_URL": redis_url,
        "OFFLOAD_API_KEYS": os.environ.get("OFFLOAD_API_KEYS") or api_key,
        "OFFLOAD_API_PORT": str(api_port),
        "OFFLOAD_API_METRICS_PORT": str(api_metrics_port),
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
        **delivery_env(mail_port, webhooks_port, webhook_secrets),
    }
    user, _, password = flower_auth.partition(":")
    print(
        f"""
  Offload is starting (Ctrl-C stops everything; running jobs finish or go back to their queue)

  API        http://127.0.0.1:{api_port}          docs: http://127.0.0.1:{api_port}/docs
  API key    {api_key}
  Flower     http://127.0.0.1:{flower_port}          user {user}, password {password}
  Metrics    http://127.0.0.1:{api_metrics_port}/metrics  (API and queue depths)
             http://127.0.0.1:{worker_metrics_port}/metrics  (worker)
             http://127.0.0.1:{notifier_metrics_port}/metrics  (notifier)
  Redis      {Redactor([])(redis_url)}
  Mail       smtp://127.0.0.1:{mail_port}         every email the services send is printed below ("mail")
  Webhooks   http://127.0.0.1:{webhooks_port}/<any path>  checks signatures, prints each delivery ("webhooks")
             signing secret in .run/webhook-secret (new each run unless OFFLOAD_WEBHOOK_SECRETS is set)
  Outbound   127.0.0.1 and localhost are allowed delivery targets for this local run only;
             elsewhere webhooks to private addresses are refused

  Try:  curl -s -X POST http://127.0.0.1:{api_port}/v1/jobs/echo \\
          -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\
          -d '{{"message": "hello", "sleep_ms": 2000, "queue": "high"}}'
        (README.md, "Send a notification and watch it arrive", delivers to the two above)
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
