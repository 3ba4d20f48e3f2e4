"""The operations page names the server's real metrics, with their labels, and every metric the server exposes."""

from __future__ import annotations

import re
from pathlib import Path

from convserve_server.ops import metrics
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()


def _exposed() -> dict[str, tuple[str, ...]]:
    """Every metric family the server exposes (its name as scraped) and its label names."""
    families = {}
    for collector in (value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)):
        for family in collector.describe():
            suffix = "_total" if family.type == "counter" else ""
            families[family.name + suffix] = tuple(collector._labelnames)
    return families


def test_every_documented_metric_exists_with_its_labels() -> None:
    exposed = _exposed()
    text = generate_latest(metrics.REGISTRY).decode()
    documented = re.findall(r"`(convserve_[a-z_]+)(?:\{([a-z_,]+)\})?`", OPERATIONS)
    assert len(documented) >= 10, documented
    wrong = []
    for name, labels in documented:
        if name not in exposed or f"# TYPE {name.removesuffix('_total')}" not in text:
            wrong.append(f"{name}: the server has no such metric")
        elif labels and tuple(labels.split(",")) != exposed[name]:
            wrong.append(f"{name}: documented labels {labels}, real {','.join(exposed[name])}")
    assert not wrong, "\n".join(wrong)


def test_every_metric_of_the_server_is_documented() -> None:
    documented = set(re.findall(r"`(convserve_[a-z_]+)", OPERATIONS))
    missing = sorted(set(_exposed()) - documented)
    assert not missing, f"metrics the operations page does not list: {missing}"
