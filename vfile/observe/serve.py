"""A scanning mount's optional outputs: Prometheus metrics and the audit log.

`open_outputs` runs before the gate exists: it opens the audit log (a bad path
is a clear error before anything is mounted) and builds the metrics registry,
and returns the `Observer` the gate is constructed with. `serve_outputs` is one
task in the service nursery: it serves the metrics endpoint and, on
cancellation, closes the audit log. With neither `--metrics` nor `--audit-log`
the observer is the no-op base class and nothing is served.

This module gets only what it uses: two settings, the statistics callables the
metrics read at scrape time, and constant labels. It knows nothing of the
mount, the service or the gate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from vfile.observe.audit import AuditLog
from vfile.observe.observers import Observer, Observers

if TYPE_CHECKING:
    from vfile.observe.metrics import Metrics


@dataclass
class Outputs:
    observer: Observer
    metrics: Metrics | None = None
    audit: AuditLog | None = None
    metrics_address: str | None = None


def open_outputs(metrics_address: str | None, audit_path: str | None, *,
                 status: dict[str, Callable[[], Any]],
                 journal_stats: Callable[[], dict[str, Any]],
                 info: dict[str, str]) -> Outputs:
    """`status` maps gate, appliances, drain, window, quota to their `statistics`
    callables; they are called only when the endpoint is scraped."""
    if not metrics_address and not audit_path:
        return Outputs(Observer())
    audit = AuditLog(audit_path).open() if audit_path else None
    metrics = None
    if metrics_address:
        from vfile.observe.metrics import Metrics  # prometheus_client only when asked for

        metrics = Metrics(status, journal_stats, info=info)
    return Outputs(Observers(metrics, audit), metrics, audit, metrics_address)


async def serve_outputs(outputs: Outputs, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    try:
        async with trio.open_nursery() as nursery:
            if outputs.metrics is not None and outputs.metrics_address:
                await nursery.start(outputs.metrics.serve, outputs.metrics_address)
            task_status.started()
            await trio.sleep_forever()
    finally:
        if outputs.audit is not None:
            outputs.audit.close()
