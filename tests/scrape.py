"""Scrape a live mount's Prometheus /metrics and read samples from it."""

from __future__ import annotations

import json
import re
import urllib.request

from mounting import Server
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metrics_url(server: Server) -> str:
    # Port 0 on loopback: the server logs where it listens.
    for line in server.log().splitlines():
        record = json.loads(line)  # --log-format json: every line is one object
        found = re.fullmatch(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", record["message"])
        if found:
            return found.group(1)
    raise AssertionError(f"no metrics address in the log:\n{server.log()}")


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over samples of `name` whose labels include `labels`."""
    hits = [v for (n, ls), v in samples.items()
            if n == name and set(labels.items()) <= set(ls)]
    assert hits, f"no sample {name} {labels}"
    return sum(hits)
