"""NODES: several chatd nodes on one PostgreSQL database.

A throwaway local PostgreSQL (:func:`tests.pg_cluster.local_cluster` with
``fsync=on``, ``synchronous_commit=on``, ``full_page_writes=on``: each commit
costs what it costs in production), a new database for each part:

* ``NODES S1 K=64 1 node``: S1's closed loop, K senders on one daemon;
* ``NODES S1 K=64 2 nodes``: two daemons on one database, K/2 senders on each:
  acks/s of both, p50/p99 ack latency, CPU per ack of both daemons summed (and
  of PostgreSQL, all its processes, beside it);
* ``NODES commits 2 nodes``: during that run, from both daemons' /metrics: commit
  batches/s (both nodes), mean batch size, mean commit time. Every commit takes
  the one counter row (``SELECT ... FOR UPDATE``) and holds it until its COMMIT
  has returned, so commits of all nodes take turns: this row is what that costs;
* ``NODES S2 A->B``: one sender at R msg/s on node A, N subscribers on node B:
  every delivery crosses nodes (sent to A, committed, read by B's tail, which
  a NOTIFY wakes, and sent to B's subscribers);
* ``NODES S2 ... per node``: a sender at R msg/s on each node (2R in all, one
  channel) and N/2 subscribers on each: every subscriber sees both streams as
  one; its cross-node latency is that of the events sent to the other node.

Both S2 rows check every event against the acknowledged seqs of both senders,
in order, as S2 does; their figure is the cross-node p99.
"""

from __future__ import annotations

from typing import Any

from tests.pg_cluster import DURABLE, MISSING, PgServer, local_cluster, pg_bin

from .daemon import Daemon
from .scenarios import (
    Bench,
    Row,
    _commit_stats,
    _s1_round,
    cpu_note,
    daemon_cost,
    fanout_round,
    log,
    verdict,
)
from .stats import merge, ms, percentile
from .workers import Pool, split

SECTION = "NODES"
TITLE = "Several nodes on PostgreSQL"


def unavailable() -> str | None:
    """Why NODES cannot run here, or None."""
    if pg_bin() is None:
        return f"no PostgreSQL: it needs {MISSING}"
    return None


def run_nodes(b: Bench, sqlite_s1: Row | None) -> list[Row]:
    """The NODES rows; ``sqlite_s1`` is this run's single-node sqlite S1 row of
    the same K, if it has one, to quote beside them."""
    with local_cluster(DURABLE) as server:
        pg = server.postmaster_pid()
        log(f"NODES: PostgreSQL started (pid {pg}; {DURABLE})")
        one, one_commits = _s1(b, server, pg, 1, sqlite_s1, None)
        two, two_commits = _s1(b, server, pg, 2, sqlite_s1, one)
        rows = [one, two, _commit_row(b, two_commits, one_commits), *_s2(b, server, pg)]
    for r in rows:
        r.section = SECTION
    return rows


def _s1(
    b: Bench, server: PgServer, pg: int, n: int, sqlite_s1: Row | None, one: Row | None
) -> tuple[Row, dict[str, Any]]:
    """S1 at K = nodes_k with the senders split over ``n`` nodes: the row, and
    the commit statistics of all nodes (``per_node``: each one's)."""
    sz = b.sizes
    k = sz.nodes_k
    assert sz.sender_workers % n == 0, "sender workers split evenly over the nodes"
    label = f"NODES S1 K={k} {n} node{'s' if n > 1 else ''}"
    _, url = server.create_database()
    with b.nodes(f"nodes-s1-{n}", url, n) as (ds, params):
        # Worker i sends to node i mod n: with 2 workers and 2 nodes, K/2 on each.
        workers = [{**params[i % n], "conns": c}
                   for i, c in enumerate(split(k, sz.sender_workers))]
        with Pool("senders", workers) as pool:
            pool.gather(120, "ready")
            m0 = [d.metrics() for d in ds]
            rate, lat, detail = _s1_round(b, pool, ds, k, postgres=pg, label=label)
            m1 = [d.metrics() for d in ds]
    commits = _commit_stats(merge(m0), merge(m1), sz.s1_duration)
    commits["per_node"] = [_commit_stats(a, z, sz.s1_duration)
                           for a, z in zip(m0, m1, strict=True)]
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    who = "daemons (summed)" if n > 1 else "daemon"
    cost = daemon_cost(detail, len(lat), "ack", who=who)
    detail.update(nodes=n, senders_per_node=k // n, **commits)
    compare = []
    if one is not None:
        compare.append(f"1 node on PostgreSQL {one.figure:,.0f} msg/s")
    if sqlite_s1 is not None:
        detail["sqlite_msg_per_s"] = round(sqlite_s1.figure, 1)
        compare.append(f"1 node on sqlite (S1 K={k} above) {sqlite_s1.figure:,.0f} msg/s, "
                       f"{sqlite_s1.detail.get('daemon_us_per_ack')} µs/ack")
    note = (f"p50 {ms(p50)} ms, p99 {ms(p99)} ms; {cost}; " + cpu_note(detail, who=who)
            + "".join(f"; {c}" for c in compare))
    log(f"{label}: {rate:.0f} msg/s, p50 {ms(p50)} ms, p99 {ms(p99)} ms")
    return Row(label, rate, "msg/s", note=note, detail=detail), commits


def _commit_row(b: Bench, two: dict[str, Any], one: dict[str, Any]) -> Row:
    """The counter row's cost: commit batches of both nodes during the 2-node S1."""
    if not two:
        return Row("NODES commits 2 nodes", float("nan"), "commits/s",
                   note="no commit in the window")
    each = ", ".join(f"{node.get('commits_per_s', 0):,.0f}" for node in two["per_node"])
    turn = 1000 / two["commits_per_s"]
    note = (f"{each} commits/s on the two nodes; mean batch {two['mean_batch']} sends; "
            f"mean commit {two['mean_commit_ms']} ms (the writer's time for a batch: "
            f"BEGIN and the wait for the counter row, the statements, COMMIT); writers "
            f"busy {two['writer_busy']:.2f} of 2; the counter row passes from commit to "
            f"commit every {turn:.2f} ms")
    if one:
        note += (f"; 1 node: {one['commits_per_s']:,.0f} commits/s, mean batch "
                 f"{one['mean_batch']}, mean commit {one['mean_commit_ms']} ms")
    detail = {**{k: v for k, v in two.items() if k != "per_node"},
              "per_node": two["per_node"], "counter_turn_ms": round(turn, 3),
              "one_node": one, "seconds": b.sizes.s1_duration}
    log(f"NODES commits: {two['commits_per_s']:.0f} commits/s, {note}")
    return Row("NODES commits 2 nodes", two["commits_per_s"], "commits/s", note=note,
               detail=detail)


def _s2(b: Bench, server: PgServer, pg: int) -> list[Row]:
    """S2 across two nodes: A to B, then a sender on each node."""
    sz = b.sizes
    n, rate = sz.nodes_s2
    _, url = server.create_database()
    rows = []
    with b.nodes("nodes-s2", url, 2) as (ds, (a, z)):
        # Sender on A, every subscriber on B.
        with Pool("paced", [{**a, "origin": "A"}]) as sender, \
                Pool("subs", [{**z, "node": "B", "n": c}
                              for c in split(n, sz.sub_workers)]) as subs:
            sender.gather(60, "ready")
            subs.gather(300, "ready")
            rows.append(_s2_round(b, ds, sender, subs, n, rate,
                                  f"NODES S2 A->B N={n} @{rate}/s", pg))
        # A sender on each node; subscriber worker i on node i mod 2.
        nodes = [(a, "A"), (z, "B")]
        with Pool("paced", [{**p, "origin": name} for p, name in nodes]) as sender, \
                Pool("subs", [{**nodes[i % 2][0], "node": nodes[i % 2][1], "n": c}
                              for i, c in enumerate(split(n, sz.sub_workers))]) as subs:
            sender.gather(60, "ready")
            subs.gather(300, "ready")
            rows.append(_s2_round(b, ds, sender, subs, n, rate,
                                  f"NODES S2 N={n} @{rate}/s per node", pg))
    return rows


def _s2_round(
    b: Bench, ds: list[Daemon], sender: Pool, subs: Pool, n: int, rate: int, label: str,
    pg: int,
) -> Row:
    """One fanout round as a NODES row: the figure is the cross-node p99; the
    nodes' commits (all of them) in the detail."""
    m0 = [d.metrics() for d in ds]
    row = fanout_round(b, ds, sender, subs, n, rate, b.sizes.s2_duration, label, postgres=pg)
    commits = _commit_stats(merge(m0), merge([d.metrics() for d in ds]), b.sizes.s2_duration)
    dt = row.detail
    dt.update(commits)
    p99 = dt.get("cross_p99_ms")
    dt["deliveries_per_s"] = round(row.figure)
    row.note = f"{row.figure:,.0f} deliveries/s; " + row.note
    if commits:
        row.note += (f"; {commits['commits_per_s']:,.0f} commits/s (both nodes), mean batch "
                     f"{commits['mean_batch']}, mean commit {commits['mean_commit_ms']} ms")
    row.figure = float("nan") if p99 is None else p99
    row.unit = "ms cross-node p99"
    row.target = "cross-node p99 <= 100 ms, all delivered in order"
    row.status = verdict(p99 is not None and p99 <= 100 and dt["all_delivered_in_order"])
    return row
