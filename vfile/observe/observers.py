"""What the gate reports beyond its counters: timings for metrics, audit events.

The gate holds one `Observer` and calls it at a few points (an open decided,
a scan finished, a verdict settled, an open denied/allowed unscanned). The
base class does nothing, so a mount without `--metrics` or `--audit-log`
pays one method call. The mount (vfile.service) plugs in `Observers`,
which fans out to the Prometheus metrics and the audit log.

Invariant: an observer never raises into the gate and never blocks: metrics
observe in memory, the audit log queues one line for its writer thread.
"""

from __future__ import annotations

from typing import Protocol


class Observer:
    """The no-op observer (the gate's default)."""

    def opened(self, decision: str, seconds: float) -> None:
        """An open was decided (allow / deny / defer) after `seconds`."""

    def scanned(self, result: str, appliance: str, seconds: float) -> None:
        """A scan through the pool ended with `result` (clean, infected, error,
        unavailable, timeout) after `seconds`; `appliance` may be empty."""

    def audit(self, event: str, path: str, **fields: object) -> None:
        """A verdict or an action worth an audit line (see vfile.observe.audit)."""

    def statistics(self) -> dict[str, int] | None:
        """The audit log's counters (lines, queued, dropped), if there is one."""
        return None


class OpenMetrics(Protocol):
    def opened(self, decision: str, seconds: float) -> None: ...
    def scanned(self, result: str, appliance: str, seconds: float) -> None: ...


class AuditSink(Protocol):
    def write(self, event: str, path: str, fields: dict[str, object]) -> None: ...
    def statistics(self) -> dict[str, int]: ...


class Observers(Observer):
    """Metrics and/or an audit log, either of which may be absent."""

    def __init__(self, metrics: OpenMetrics | None = None,
                 audit_log: AuditSink | None = None) -> None:
        self._metrics = metrics
        self._audit = audit_log

    def opened(self, decision: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.opened(decision, seconds)

    def scanned(self, result: str, appliance: str, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.scanned(result, appliance, seconds)

    def audit(self, event: str, path: str, **fields: object) -> None:
        if self._audit is not None:
            self._audit.write(event, path, fields)

    def statistics(self) -> dict[str, int] | None:
        return None if self._audit is None else self._audit.statistics()
