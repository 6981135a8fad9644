"""kombu's Redis transport with a cheaper per-message path, for the worker's main process.

Three changes, nothing else (URLs, restores, publishing and the BRPOP wait are kombu's own):

- Messages taken in batches while the queues have some. kombu takes one message per BRPOP and
  then records it as unacknowledged in a second round trip. When the last take found a message,
  this channel instead takes up to its free prefetch slots in one Lua script that pops each
  message and records it as unacknowledged in the same atomic step (so no Redis restart can fall
  between the two), in the order BRPOP would (priority first, then queue order). It does so
  only once at least half of the prefetch window is free, so that one round trip brings several
  messages; the reserved half keeps the pool busy meanwhile. When the queues run dry it waits
  in BRPOP as kombu does, and a message BRPOP brings switches batching back on.

- One Redis client object per channel pool instead of a new one per call: kombu builds a client
  (and its table of response callbacks) for every acknowledgement and every delivered message.
- Acknowledgements are written in batches. With late acks every finished task costs the main
  process a synchronous ZREM+HDEL round trip; here the ack frees the prefetch slot at once
  (kombu's in-memory state) and the message leaves the unacked hash with the others acked in the
  same ACK_FLUSH_SECONDS, or as soon as ACK_BATCH_MAX are waiting. A message whose ack has not
  reached Redis yet when the worker dies is redelivered after the visibility timeout, as any
  unacknowledged one: at-least-once is kept, and the job store skips a job that already ended.
  Before the channel hands its unacknowledged messages back (soft shutdown, lost connection),
  the waiting acks are written first, so an acked message is not requeued.

Acks from a thread other than the event loop's (the threads pool), or before the transport
joined an event loop, are written at once, as kombu does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from queue import Empty
from typing import Any

from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from offload_core.runtime.celery_versions import require_supported_versions
from offload_core.runtime.task_message import TAKE

require_supported_versions()  # the subclasses below reach into kombu 5.7's Redis transport

logger = logging.getLogger(__name__)

# kombu's Redis classes are untyped where these subclasses reach in.
_RedisQoS: Any = kombu_redis.QoS
_RedisChannel: Any = kombu_redis.Channel
_RedisTransport: Any = kombu_redis.Transport
_RedisSentinelChannel: Any = kombu_redis.SentinelChannel
_RedisSentinelTransport: Any = kombu_redis.SentinelTransport
_VirtualQoS: Any = virtual.QoS

# Longest time an acknowledged message stays in Redis's unacked hash, and the most acks written
# in one round trip.
ACK_FLUSH_SECONDS = 0.05
ACK_BATCH_MAX = 64
# Most messages one batch takes (when the prefetch window is unlimited, or larger).
TAKE_BATCH_MAX = 64


class BatchedAckQoS(_RedisQoS):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending_acks: list[str] = []
        self._flush_timer: Any = None
        self._flush_due = 0.0
        self.recorded_in_redis = False  # set while delivering messages the take script recorded

    def append(self, message: Any, delivery_tag: str) -> None:
        if self.recorded_in_redis:
            _VirtualQoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        transport: Transport = self.channel.connection
        if transport.hub is None or threading.get_ident() != transport.loop_thread:
            super().ack(delivery_tag)
            return
        self._pending_acks.append(delivery_tag)
        _VirtualQoS.ack(self, delivery_tag)  # frees the prefetch slot now
        # Overdue: the loop dropped its timers (it does when the connection is lost).
        overdue = self._flush_timer is not None and time.monotonic() > self._flush_due + 1
        if len(self._pending_acks) >= ACK_BATCH_MAX or overdue:
            self.flush_acks()
        elif self._flush_timer is None:
            self._flush_due = time.monotonic() + ACK_FLUSH_SECONDS
            self._flush_timer = transport.hub.call_later(ACK_FLUSH_SECONDS, self.flush_acks)

    def flush_acks(self) -> None:
        """Remove the acknowledged messages from the unacked hash and index, in one round trip."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        tags, self._pending_acks = self._pending_acks, []
        if not tags:
            return
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
        except self.channel.connection.connection_errors + self.channel.connection.channel_errors as exc:
            # As kombu does with an ack that fails: the messages stay unacknowledged in Redis and
            # come back after the visibility timeout; the job store skips the ones that ended.
            logger.warning("could not acknowledge %d messages: %r", len(tags), exc)

    def restore_unacked_once(self, stderr: Any = None) -> Any:
        # Runs when the channel closes; kombu restores only what is still delivered and unacked.
        self.flush_acks()
        return super().restore_unacked_once(stderr)

    def restore_unacked(self, client: Any = None) -> Any:
        self.flush_acks()
        return super().restore_unacked(client)


class Channel(_RedisChannel):  # type: ignore[misc]
    QoS = BatchedAckQoS
    _sync_client: Any = None
    _take_script: Any = None
    # Whether the last take found messages: then the next one is a batch, not a BRPOP.
    _queues_had_messages = False

    def _brpop_start(self, timeout: Any = None) -> None:
        transport: Transport = self.connection
        batching = self._queues_had_messages and transport.hub is not None and not self.global_keyprefix
        if batching and self._take_batch():
            return  # no BRPOP this turn; the loop comes back when a slot frees
        super()._brpop_start(timeout)

    def _brpop_read(self, **options: Any) -> Any:
        delivered = super()._brpop_read(**options)
        self._queues_had_messages = bool(delivered)
        return delivered

    def close(self) -> None:
        # kombu's close first reads the reply of a BRPOP in flight and gives up half-way when
        # that read fails (Redis gone): the channel stays open, and a later close, once the
        # transport is detached, raises AttributeError, which Celery treats as unrecoverable
        # and exits the worker. A reply that cannot be read goes with the connection instead,
        # for every channel (tasks, remote control), so the close runs to the end and restores
        # the unacknowledged messages (now, or by any worker after the visibility timeout).
        if getattr(self, "_in_poll", None) and self.connection is not None:
            with contextlib.suppress(Empty, *self.connection.connection_errors):
                self._brpop_read()
        super().close()

    def _take_batch(self) -> bool:
        """Take messages in one round trip; False when the queues are empty (BRPOP then)."""
        window = self.qos.prefetch_count or TAKE_BATCH_MAX
        free = self.qos.can_consume_max_estimate()
        free = TAKE_BATCH_MAX if free is None else min(free, TAKE_BATCH_MAX)
        if free < max(1, min(window, TAKE_BATCH_MAX) // 2):
            return True  # wait for more room: what is reserved keeps the pool busy
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return False
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        client = self._create_client()
        if self._take_script is None:
            self._take_script = client.register_script(TAKE)
        reply = self._take_script(
            keys=[self.unacked_index_key, self.unacked_key, *keys], args=[free, time.time()], client=client
        )
        stopped, flat = reply[0], reply[1:]
        taken = list(zip(flat[0::2], flat[1::2], strict=True))
        self._queues_had_messages = len(taken) == free and not stopped
        for index, (dest, item) in enumerate(taken):
            queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            self.qos.recorded_in_redis = True
            try:
                self.connection._deliver(loads(bytes_to_str(item)), queue)
            except BaseException:
                self._hand_back([raw for _, raw in taken[index + 1 :]])
                raise
            finally:
                self.qos.recorded_in_redis = False
        return bool(taken)

    def _hand_back(self, items: list[Any]) -> None:
        """Put messages taken but not delivered back on their queue, next in line."""
        for item in items:
            self.qos.restore_by_tag(loads(bytes_to_str(item))["properties"]["delivery_tag"])

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        # A new pool after a reconnect or fork gets a new client.
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(_RedisTransport):  # type: ignore[misc]
    Channel = Channel
    hub: Any = None
    loop_thread: int | None = None

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        self.hub = loop
        self.loop_thread = threading.get_ident()


class SentinelChannel(Channel, _RedisSentinelChannel):  # type: ignore[misc]
    """The same channel on a pool that kombu's Sentinel channel makes: it asks the sentinels
    for the primary on each new connection, so after a failover the channel reconnects to the
    new one (the take script is loaded there again on its first NOSCRIPT)."""


class SentinelTransport(Transport):
    Channel = SentinelChannel
    default_port = _RedisSentinelTransport.default_port


def use_worker_transport() -> None:
    """Make redis://, rediss:// and sentinel:// broker URLs use these transports in this process.
    Only the class changes: kombu still reads the URL (and its TLS defaults) by its scheme."""
    for scheme, transport in (("redis", Transport), ("rediss", Transport), ("sentinel", SentinelTransport)):
        kombu_transports.TRANSPORT_ALIASES[scheme] = f"{transport.__module__}:{transport.__qualname__}"
        getattr(kombu_transports, "_transport_cache", {}).pop(scheme, None)
