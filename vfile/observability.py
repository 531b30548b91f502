"""Wire a scanning mount's optional outputs: Prometheus metrics and the audit log.

`serve_observers` is one task in the service nursery (vfile.service): it
opens the audit log, starts the metrics endpoint, plugs both into the gate
as its `Observer`, reports started, and on cancellation closes the audit
log. With neither `--metrics` nor `--audit-log` it only reports started: the
gate keeps its no-op observer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

import vfile
from vfile.audit import AuditLog
from vfile.observe import Observers

if TYPE_CHECKING:
    from vfile.mount import MountOptions
    from vfile.service import Running


async def serve_observers(opts: MountOptions, running: Running, *,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    if not opts.metrics and not opts.audit_log:
        task_status.started()
        return
    audit = AuditLog(opts.audit_log).open() if opts.audit_log else None
    try:
        metrics = None
        if opts.metrics:
            from vfile.metrics import Metrics  # prometheus_client only when asked for

            info = running.commands.info
            status = {"gate": running.gate.statistics, "appliances": running.pool.statistics,
                      "drain": running.drain.statistics, "window": running.window.statistics,
                      "quota": running.quota.statistics}
            metrics = Metrics(status, running.journal.stats,
                              info={"version": vfile.__version__, "source": info.source,
                                    "mountpoint": info.mountpoint})
            running.extra["metrics"] = metrics
        running.gate.observer = Observers(metrics, audit)
        async with trio.open_nursery() as nursery:
            if metrics is not None and opts.metrics:
                await nursery.start(metrics.serve, opts.metrics)
            task_status.started()
            await trio.sleep_forever()
    finally:
        if audit is not None:
            audit.close()
