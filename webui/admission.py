"""A bound on how long a request may wait in the queue: past it, "busy, try again" at once.

Gradio's queue holds every request until a worker is free; its only bound, `max_size`, counts
requests, not seconds, so under load a Compare query could sit for minutes before anyone told its
visitor anything. `BoundedQueue` keeps Gradio's queue and adds two checks, per endpoint:

- at the door: a request whose expected wait (the measured service time of each request queued
  ahead of it in its concurrency group, plus its own, divided by the group's concurrency) is over
  `max_wait_s` is refused at once with HTTP 503, Gradio's own "queue full" answer (the page shows
  "This application is currently busy. Please try again.", gradio_client raises QueueError, and a
  raw HTTP caller reads our message in `detail`);
- in the queue: a request that has waited `max_wait_s` without starting (the estimate was wrong,
  or service slowed down) is taken out and answered with an error that says the app is busy.

So no answered request waited longer than `max_wait_s` (plus one sweep interval) before its
handler started. Service times are Gradio's own measurements per endpoint, the median of the last
few, so they follow the load (a busy CPU makes every request slower) but not one slow outlier
(the first deep query after start-up also loads the model); before MIN_SAMPLES answers of an
endpoint, there is no estimate and only the sweep bounds the wait. Groups without a
concurrency limit (the model-status timer) never wait and are never refused.

This subclasses gradio.queueing.Queue (push, get_events, process_time_per_fn, Event.enqueue_time):
internals of the pinned Gradio, so tests/test_busy.py checks both refusals through a launched app.
"""
from __future__ import annotations

import logging
import math
import os
import time
import statistics
from collections import defaultdict, deque
from typing import Any, Literal

import gradio as gr
from gradio import queueing
from gradio.server_messages import ProcessCompletedMessage
from gradio.utils import error_payload

from retrieval.errors import LookalikeError

log = logging.getLogger(__name__)
PushStatus = Literal["success", "error", "queue_full", "validator_error"]   # gradio.queueing.Queue.push's

RECENT = 9               # service time: the median of an endpoint's last 9 (follows the load, ignores outliers)
MIN_SAMPLES = 3          # fewer answered requests than this: no estimate at the door (the sweep still bounds)
SWEEP_EVERY_S = 0.25     # how often queued requests are checked for an overlong wait
WAIT_ENV = "LOOKALIKE_MAX_WAIT_S"


def busy_at_door(wait_s: float, bound_s: float) -> str:
    return (f"the app is busy: this request would wait about {wait_s:.0f} s for a free worker (the limit "
            f"is {bound_s:g} s); please try again in a moment")


def busy_in_queue(waited_s: float, bound_s: float) -> str:
    return (f"the app is busy: this request waited {waited_s:.0f} s in the queue without starting (the "
            f"limit is {bound_s:g} s); please try again in a moment")


class ServiceTime(queueing.ProcessTime):
    """Gradio's record of one endpoint's service times (from a worker picking a request up to its
    answer), plus the median of the last few: Gradio's own mean runs from start-up, and one slow
    request (the first deep query, which waits for the model to load) would skew any average."""

    def __init__(self) -> None:
        super().__init__()
        self.last: deque[float] = deque(maxlen=RECENT)

    def add(self, time: float) -> None:
        super().add(time)
        self.last.append(time)

    @property
    def recent(self) -> float | None:
        """None until MIN_SAMPLES requests were answered: one sample may be the model's load."""
        return statistics.median(self.last) if len(self.last) >= MIN_SAMPLES else None


class BoundedQueue(queueing.Queue):
    """Gradio's queue, with a bound on the wait (see the module docstring)."""

    def __init__(self, *args: Any, max_wait_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_wait_s = float(max_wait_s)
        self.process_time_per_fn = defaultdict(ServiceTime)   # Gradio measures, ServiceTime averages
        self._next_sweep = 0.0

    def service_s(self, fn: Any) -> float | None:
        """The endpoint's recent service time; None until it has been measured."""
        record = self.process_time_per_fn.get(fn)
        return record.recent if isinstance(record, ServiceTime) else None

    def expected_wait(self, fn: Any) -> float:
        """Seconds until a new request of `fn` would start: 0 while its group has a free slot, or
        while a request in the group has no measured service time (then only the sweep bounds it)."""
        group = self.event_queue_per_concurrency_id.get(fn.concurrency_id)
        if group is None or group.concurrency_limit is None:
            return 0.0
        if not group.queue and group.current_concurrency < group.concurrency_limit:
            return 0.0
        times = [self.service_s(e.fn) for e in group.queue] + [self.service_s(fn)]
        known = [t for t in times if t is not None]
        if len(known) < len(times):
            return 0.0
        return sum(known) / group.concurrency_limit

    async def push(self, body: Any, request: Any,
                   username: str | None) -> tuple[bool, str | list[dict[str, Any]], PushStatus]:
        fn = self.blocks.fns.get(body.fn_index) if isinstance(body.fn_index, int) else None
        if fn is not None:
            wait = self.expected_wait(fn)
            if wait > self.max_wait_s:
                log.info("refused %s at the door: expected wait %.1f s", fn.api_name, wait)
                return False, busy_at_door(wait, self.max_wait_s), "queue_full"
        return await super().push(body, request, username)

    def get_events(self) -> Any:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_S
            self._refuse_stale(now)
        return super().get_events()

    def _refuse_stale(self, now: float) -> None:
        """Answer "busy" to every queued request that has waited past the bound, and drop it.
        Runs under the queue's delete lock (get_events' caller holds it)."""
        for group in self.event_queue_per_concurrency_id.values():
            stale = [e for e in group.queue if now - e.enqueue_time > self.max_wait_s]
            for event in stale:
                group.queue.remove(event)
                self.event_ids_to_events.pop(event._id, None)
                waited = now - event.enqueue_time
                log.info("refused %s after %.1f s in the queue", event.fn.api_name, waited)
                if (record := self.event_analytics.get(event._id)) is not None:
                    record["status"] = "failed"
                error = gr.Error(busy_in_queue(waited, self.max_wait_s), title="Busy", print_exception=False)
                content = error_payload(error, True)
                self.send_message(event, ProcessCompletedMessage(output=content, title="Busy", success=False))
            if stale and self.live_updates:   # the requests behind them moved up: tell their visitors
                self.broadcast_estimations(group.concurrency_id)


def wait_bound(default_s: float) -> float:
    """The wait bound: `default_s`, or LOOKALIKE_MAX_WAIT_S (seconds, or "off" for no bound: only
    the queue's size limits it then). The right bound depends on the hardware and the index."""
    raw = os.environ.get(WAIT_ENV, "").strip()
    if not raw:
        return float(default_s)
    if raw.lower() == "off":
        return math.inf
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise LookalikeError(f"{WAIT_ENV} must be a number of seconds above 0, or off; got {raw[:40]!r}")
    return value


def bounded_queue(demo: gr.Blocks, *, max_wait_s: float, **queue_kwargs: Any) -> gr.Blocks:
    """demo.queue(**queue_kwargs), with Gradio's queue replaced by a BoundedQueue of the same
    settings; the bound is `max_wait_s` unless LOOKALIKE_MAX_WAIT_S says otherwise."""
    demo.queue(**queue_kwargs)
    max_wait_s = wait_bound(max_wait_s)
    q = demo._queue
    demo._queue = BoundedQueue(live_updates=q.live_updates, concurrency_count=q.max_thread_count,
                               update_intervals=q.update_intervals, max_size=q.max_size, blocks=demo,
                               default_concurrency_limit=q.default_concurrency_limit, max_wait_s=max_wait_s)
    return demo
