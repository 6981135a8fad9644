"""`make run`: Redis, the API, one worker per worker set (the notifier's among them) and Flower
on this machine, no Docker, plus a mail sink and a webhook receiver that print what the services
deliver.

The worker sets are the chart's defaults (offload_core.contract.topology.DEFAULT_WORKER_SETS), plus one
worker for each queue of your own named in OFFLOAD_QUEUES, e.g. ``OFFLOAD_QUEUES=high,default,low,acme``.

`--plugin PATH` (repeatable; `make run PLUGINS="path ..."`) adds job plugin projects: they are
installed beside .venv (offload_dev.plugins), and each queue of theirs joins OFFLOAD_QUEUES with a
worker of its own.

Redis runs outside the process manager and stops last, so workers that stop on Ctrl-C can
still hand their unfinished tasks back to it. Its data (append-only) survives restarts.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import signal
import sys
from pathlib import Path

import honcho.manager
from honcho.environ import parse_procfile

from offload_core.contract.topology import BUILTIN_QUEUES, DEFAULT_WORKER_SETS, WorkerSet, queue_name_problem
from offload_core.logs import Redactor
from offload_dev.plugins import install_plugins, plugin_queues
from offload_dev.processes import worker_env
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


def _command_path(name: str) -> str:
    """A console script of this environment as the developer can type it (.venv/bin/offload)."""
    command = Path(sys.executable).with_name(name)
    return str(command.relative_to(ROOT)) if command.is_relative_to(ROOT) else str(command)


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


def local_worker_sets(queues: list[str]) -> list[WorkerSet]:
    """The default worker sets, plus a worker set of the worker image for each other queue;
    raises ValueError when a queue name is unusable or a built-in queue is missing."""
    problems = [problem for queue in queues if (problem := queue_name_problem(queue))]
    problems += [f"the built-in queue {queue!r} is missing" for queue in BUILTIN_QUEUES if queue not in queues]
    if problems:
        raise ValueError("OFFLOAD_QUEUES: " + "; ".join(problems))
    consumed = {queue for worker_set in DEFAULT_WORKER_SETS for queue in worker_set.queues}
    own = [WorkerSet(queue, (queue,)) for queue in dict.fromkeys(queues) if queue not in consumed]
    return [*DEFAULT_WORKER_SETS, *own]


def worker_processes(worker_sets: list[WorkerSet], state: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """Process name -> (command, environment) of one worker per set; each has its own state
    directory, node name and metrics port, as a pod of the set would."""
    processes = {}
    for index, worker_set in enumerate(worker_sets):
        processes[f"worker-{worker_set.name}"] = (
            f"python -m offload_{worker_set.image}",
            worker_env(
                f"{worker_set.name}@%h",
                state / f"worker-{worker_set.name}",
                _port(9808 + index),
                ",".join(worker_set.queues),
            ),
        )
    return processes


def plugin_env(projects: list[Path]) -> tuple[dict[str, str], list[str], str]:
    """The services' environment for these plugin projects, the queues their job types use, and
    a line for the banner."""
    if not projects:
        return {}, [], ""
    target = STATE / "plugins"
    install_plugins([project.resolve() for project in projects], target)
    python_path = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    names = ", ".join(str(project) for project in projects)
    return {"PYTHONPATH": python_path}, plugin_queues(target), f"  Plugins    {names}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__)
    parser.add_argument("--plugin", action="append", type=Path, default=[], help="a job plugin project directory")
    args = parser.parse_args(argv)
    STATE.mkdir(exist_ok=True)
    plugins, own_queues, plugins_line = plugin_env(args.plugin)
    queues = [q.strip() for q in os.environ.get("OFFLOAD_QUEUES", ",".join(BUILTIN_QUEUES)).split(",") if q.strip()]
    queues += [queue for queue in own_queues if queue not in queues]  # each gets a worker of its own
    try:
        worker_sets = local_worker_sets(queues)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
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
    # The API's metrics and each worker's are on ports of their own, side by side here.
    api_metrics_port = _port(9807)
    workers = worker_processes(worker_sets, STATE)
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
        "OFFLOAD_QUEUES": ",".join(queues),
        "OFFLOAD_API_METRICS_PORT": str(api_metrics_port),
        "OFFLOAD_WORKER_SOFT_SHUTDOWN_TIMEOUT_SECONDS": str(SOFT_SHUTDOWN_SECONDS),
        "OFFLOAD_WORKER_METRICS_HOST": "127.0.0.1",
        # The processes write into the process manager's pipe, not a terminal: say which format.
        "OFFLOAD_LOG_FORMAT": os.environ.get("OFFLOAD_LOG_FORMAT") or ("text" if sys.stdout.isatty() else "json"),
        "FLOWER_BASIC_AUTH": flower_auth,
        "FLOWER_PORT": str(flower_port),
        "OFFLOAD_STATE": str(STATE),
        # Image and report blobs in a directory every local process shares (no S3 needed).
        "OFFLOAD_BLOB_BACKEND": os.environ.get("OFFLOAD_BLOB_BACKEND", "filesystem"),
        "OFFLOAD_BLOB_DIR": os.environ.get("OFFLOAD_BLOB_DIR") or str(STATE / "blobs"),
        "PYTHONUNBUFFERED": "1",
        **delivery_env(mail_port, webhooks_port, webhook_secrets),
        **plugins,
    }
    user, _, password = flower_auth.partition(":")
    worker_metrics = "\n".join(
        f"             http://127.0.0.1:{its_env['OFFLOAD_WORKER_METRICS_PORT']}/metrics  ({name}: "
        f"{its_env['OFFLOAD_WORKER_QUEUES']})"
        for name, (_, its_env) in workers.items()
    )
    cli = _command_path("offload")
    print(
        f"""
  Offload is starting (Ctrl-C stops everything; running jobs finish or go back to their queue)

  API        http://127.0.0.1:{api_port}          docs: http://127.0.0.1:{api_port}/docs
  API key    {api_key}
  Flower     http://127.0.0.1:{flower_port}          user {user}, password {password}
  Metrics    http://127.0.0.1:{api_metrics_port}/metrics  (API and queue depths)
{worker_metrics}
  Redis      {Redactor([])(redis_url)}
  Blobs      {env["OFFLOAD_BLOB_DIR"] if env["OFFLOAD_BLOB_BACKEND"] == "filesystem" else "S3 (OFFLOAD_BLOB_S3_*)"}
{plugins_line}  Mail       smtp://127.0.0.1:{mail_port}         every email the services send is printed below ("mail")
  Webhooks   http://127.0.0.1:{webhooks_port}/<any path>  checks signatures, prints each delivery ("webhooks")
             signing secret in .run/webhook-secret (new each run unless OFFLOAD_WEBHOOK_SECRETS is set)
  Outbound   127.0.0.1 and localhost are allowed delivery targets for this local run only;
             elsewhere webhooks to private addresses are refused

  Try:  curl -s -X POST http://127.0.0.1:{api_port}/v1/jobs/echo \\
          -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json' \\
          -d '{{"message": "hello", "sleep_ms": 2000, "queue": "high"}}'
  Or:   export OFFLOAD_URL=http://127.0.0.1:{api_port} OFFLOAD_API_KEY={api_key}
        {cli} submit offload.echo --json '{{"message": "hello", "sleep_ms": 2000}}' --queue high
        {cli} watch <id>    (a live progress bar)    {cli} queues    {cli} --help
        (README.md, "Send a notification and watch it arrive", delivers to the two above)
""",
        flush=True,
    )

    manager = honcho.manager.Manager()
    procfile = parse_procfile((ROOT / "Procfile").read_text())
    for name, command in procfile.processes.items():
        manager.add_process(name, command, env={**os.environ, **env}, cwd=str(ROOT))
    for name, (command, its_env) in workers.items():
        manager.add_process(name, command, env={**os.environ, **env, **its_env}, cwd=str(ROOT))
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
