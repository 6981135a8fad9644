"""An API process takes at most OFFLOAD_API_MAX_CONNECTIONS connections at once: idle ones
held open by a client count, and the next request is answered 503 instead of queueing."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from offload_dev.polling import wait_for
from tests.support import TEST_SETTINGS, cluster


def test_connections_beyond_the_cap_are_answered_503(tmp_path: Path) -> None:
    with cluster(tmp_path, {**TEST_SETTINGS, "OFFLOAD_API_MAX_CONNECTIONS": "3"}) as own:
        api = own.start_api()
        client = own.client
        parts = urlsplit(api.extra["url"])
        held = [socket.create_connection((parts.hostname, parts.port), timeout=10) for _ in range(3)]
        try:
            refused = client.get("/livez")
            assert refused.status_code == 503, refused.text
        finally:
            for sock in held:
                sock.close()

        def answered() -> bool:
            return bool(client.get("/livez").status_code == 200)

        wait_for(answered, 10, "the API to take connections again once the others closed")
