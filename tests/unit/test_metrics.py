"""chatd/metrics.py: the per-command figures, counted in plain Python, come out
of /metrics as Prometheus counters and cumulative histograms."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from chatd.metrics import Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(m.render().decode())
        for s in family.samples
    }


def test_commands_and_histograms_as_prometheus_reads_them() -> None:
    m = Metrics()
    for _ in range(3):
        m.command("send", "ok")
    m.command("send", "not_found")
    for v in (0.001, 0.0011, 7.0):  # on a bound, just above it, above every bound
        m.send_latency.observe(v)
    m.batch(64, 0.0005)
    got = samples(m)
    assert got[("chatd_commands_total", (("op", "send"), ("outcome", "ok")))] == 3
    assert got[("chatd_commands_total", (("op", "send"), ("outcome", "not_found")))] == 1

    def bucket(name: str, le: str) -> float:
        return got[(name + "_bucket", (("le", le),))]

    assert bucket("chatd_send_ack_seconds", "0.001") == 1, "a value on a bound is in it"
    assert bucket("chatd_send_ack_seconds", "0.002") == 2, "buckets are cumulative"
    assert bucket("chatd_send_ack_seconds", "5.0") == 2
    assert bucket("chatd_send_ack_seconds", "+Inf") == 3
    assert got[("chatd_send_ack_seconds_count", ())] == 3
    assert abs(got[("chatd_send_ack_seconds_sum", ())] - 7.0021) < 1e-9
    assert bucket("chatd_commit_batch_size", "32.0") == 0
    assert bucket("chatd_commit_batch_size", "64.0") == 1
    assert bucket("chatd_commit_seconds", "0.0005") == 1
