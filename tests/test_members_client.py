"""Private channels, direct messages, membership and read positions through
``chatd.client`` and the ``chatd`` command line, against a real daemon."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from chatd import wire
from chatd.client import Client
from chatd.client._replies import Op
from chatd.client._resend import IDEMPOTENT
from chatd.exceptions import BadRequest, NotFound

from .helpers import server_log_guard  # noqa: F401  (autouse: no traceback in the daemon log)
from .support import Daemon
from .test_client import Tail, client
from .test_clientcli import Cli


def test_every_command_the_client_writes_has_a_resend_policy() -> None:
    """A command missing from IDEMPOTENT would fail with KeyError at its first call."""
    from chatd.client import _replies

    ops = [v for v in vars(_replies).values() if isinstance(v, Op)]
    written = {op.command for op in ops} - {wire.Login, wire.Auth}
    assert written <= set(IDEMPOTENT), written - set(IDEMPOTENT)
    assert not IDEMPOTENT[wire.RemoveMember], "a repeat would answer not_found"
    assert IDEMPOTENT[wire.MarkRead] and IDEMPOTENT[wire.OpenDm] and IDEMPOTENT[wire.AddMember]


def names(users: list[wire.User]) -> list[str]:
    return [u.name for u in users]


async def test_private_channel_membership_through_the_client(daemon: Daemon) -> None:
    async with (client(daemon.url) as alice, client(daemon.url, "bob") as bob,
                client(daemon.url, "carol") as carol):
        assert alice.user is not None and bob.user is not None and carol.user is not None
        public = (await alice.create_channel("general")).channel
        assert public.kind == "public"
        start = (await bob.boot()).resume_point
        tail = Tail(bob, since=start)

        plans = (await alice.create_channel("plans", private=True)).channel
        assert plans.kind == "private" and plans.name == "plans"
        before = await alice.send(plans.id, "before bob")
        assert plans.id not in {c.id for c in (await bob.boot()).channels}
        for hidden in (bob.members(plans.id), bob.history(plans.id),
                       bob.add_member(plans.id, carol.user.id), bob.mark_read(plans.id, 1)):
            with pytest.raises(NotFound):
                await hidden
        with pytest.raises(BadRequest):
            await alice.members(public.id)

        added = await alice.add_member(plans.id, bob.user.id)
        assert isinstance(added, wire.MemberOk)
        assert added.user == bob.user and added.channel.id == plans.id
        again = await alice.add_member(plans.id, bob.user.id)  # already a member: ok
        assert again.user == bob.user
        members = await bob.members(plans.id)
        assert isinstance(members, wire.MembersOk)
        assert names(members.members) == ["alice", "bob"]
        assert members.creator == alice.user, "a private channel names its creator"
        # The whole history, also from before he joined.
        assert [m.body for m in (await bob.history(plans.id)).messages] == ["before bob"]
        (seen,) = [c for c in (await bob.boot()).channels if c.id == plans.id]
        assert seen.kind == "private" and seen.unread == 0  # history from before is not unread
        during = await alice.send(plans.id, "with bob")

        left = await bob.leave(plans.id)
        assert left.user == bob.user and left.channel.id == plans.id
        assert plans.id not in {c.id for c in (await bob.boot()).channels}
        with pytest.raises(NotFound):
            await bob.leave(plans.id)
        after = await alice.send(plans.id, "after bob")
        assert names((await alice.members(plans.id)).members) == ["alice"]
        assert (await alice.members(plans.id)).creator == alice.user

        await tail.until_seq(after.message.seq - 1)
        mine = [e for e in tail.events if e.channel.id == plans.id]
        assert [(e.kind, e.seq) for e in mine] == [
            ("member.added", mine[0].seq), ("message.sent", during.message.seq),
            ("member.removed", mine[2].seq),
        ], "bob sees the channel only while he is a member"
        assert mine[0].seq > before.message.seq
        assert mine[0].user == bob.user and mine[0].by == alice.user
        assert mine[0].channel.kind == "private" and mine[0].channel.name == "plans"
        assert mine[2].user == bob.user and mine[2].by == bob.user
        await tail.stop()


async def test_direct_messages_and_read_positions_through_the_client(daemon: Daemon) -> None:
    async with client(daemon.url) as alice, client(daemon.url, "bob") as bob:
        assert alice.user is not None and bob.user is not None
        opened = await alice.open_dm(bob.user.id)
        assert isinstance(opened, wire.OpenDmOk) and opened.created
        dm = opened.channel
        assert dm.kind == "dm" and dm.name == "alice, bob"
        assert isinstance(dm.members, list) and names(dm.members) == ["alice", "bob"]
        same = await bob.open_dm(alice.user.id)
        assert same.channel.id == dm.id and not same.created
        dm_members = await bob.members(dm.id)
        assert names(dm_members.members) == ["alice", "bob"]
        assert dm_members.creator is msgspec.UNSET, "a dm has no creator"
        with pytest.raises(BadRequest):
            await bob.leave(dm.id)

        alice_tail = Tail(alice, since=(await alice.boot()).resume_point)
        bob_tail = Tail(bob, since=(await bob.boot()).resume_point)
        first = await bob.send(dm.id, "one")
        second = await bob.send(dm.id, "two")
        await alice.send(dm.id, "mine do not count")
        (seen,) = [c for c in (await alice.boot()).channels if c.id == dm.id]
        assert seen.unread == 2 and seen.members is not None
        assert names(seen.members) == ["alice", "bob"]

        read = await alice.mark_read(dm.id, first.message.seq)
        assert isinstance(read, wire.MarkReadOk)
        assert (read.read_seq, read.unread) == (first.message.seq, 1)
        back = await alice.mark_read(dm.id, 1)  # never moves back
        assert (back.read_seq, back.unread) == (first.message.seq, 1)
        await alice_tail.wait(lambda: any(e.kind == "read.updated" for e in alice_tail.events))
        (update,) = [e for e in alice_tail.events if e.kind == "read.updated"]
        assert (update.channel.id, update.read_seq, update.unread) == (dm.id, first.message.seq, 1)

        done = await alice.mark_read(dm.id, second.message.seq)
        assert done.unread == 0
        # The read position is alice's own: bob's stream never carries it.
        marker = await bob.send(dm.id, "marker")
        await bob_tail.until_seq(marker.message.seq)
        assert not [e for e in bob_tail.events if e.kind == "read.updated"]
        await alice_tail.stop()
        await bob_tail.stop()


async def test_the_command_line_for_channels_dms_and_unread(
    daemon: Daemon, tmp_path: Path
) -> None:
    alice = Cli(tmp_path / "a", daemon.url)
    bob = Cli(tmp_path / "b", daemon.url)
    await alice.login("alice")
    await bob.login("bob")
    cid, name, kind = (await alice.ok("create-channel", "plans", "--private")).strip().split("\t")
    assert (name, kind) == ("plans", "private")
    pub = (await alice.ok("create-channel", "general")).strip().split("\t")
    assert pub[2] == "public"
    assert (await bob.ok("channels")).splitlines() == [f"{pub[0]}\tgeneral\tpublic"]
    rc, _, err = await bob.run("send", "plans", "x")
    assert rc == 1 and "no channel named 'plans'" in err

    assert (await alice.ok("add-member", "plans", "BOB")).strip() == "added bob to #plans"
    assert f"{cid}\tplans\tprivate" in (await bob.ok("channels")).splitlines()
    lines = [line.split("\t") for line in (await bob.ok("members", "plans")).splitlines()]
    assert [fields[1:] for fields in lines] == [["alice", "creator"], ["bob"]]
    rc, _, err = await bob.run("members", "general")
    assert rc == 1 and "public" in err
    rc, _, err = await alice.run("add-member", "plans", "nobody")
    assert rc == 1 and err.strip() == "chatd: no user named 'nobody' (see 'chatd users')"

    out = await alice.ok("dm", "bob", "psst")
    assert out.startswith("sent M") and out.strip().endswith("to #alice, bob")
    await alice.ok("send", "plans", "in plans")
    await alice.ok("send", "general", "hi all")
    await bob.ok("send", "general", "bob's own")
    unread = sorted((await bob.ok("unread")).splitlines())
    assert unread == ["alice, bob\tdm\t1", "general\tpublic\t1", "plans\tprivate\t1"]
    channels = {line.split("\t")[1]: line.split("\t")[2]
                for line in (await bob.ok("channels")).splitlines()}
    assert channels == {"general": "public", "plans": "private", "alice, bob": "dm"}

    out = await bob.ok("read", "alice, bob")
    assert out.startswith("#alice, bob read up to seq ") and out.strip().endswith("; 0 unread")
    unread = sorted((await bob.ok("unread")).splitlines())
    assert unread == ["alice, bob\tdm\t0", "general\tpublic\t1", "plans\tprivate\t1"]
    # The reply to alice's dm comes back into the same conversation.
    out = await bob.ok("dm", "alice", "hi back")
    assert out.strip().endswith("to #alice, bob")
    assert (await alice.ok("unread")).splitlines()[-1] == "alice, bob\tdm\t1"

    assert (await bob.ok("leave", "plans")).strip() == "left #plans"
    assert "plans" not in {line.split("\t")[1]
                           for line in (await bob.ok("channels")).splitlines()}
    rc, _, err = await bob.run("leave", "plans")
    assert rc == 1 and "no channel named 'plans'" in err
    await alice.ok("add-member", "plans", "bob")
    rc, _, err = await bob.run("remove-member", "plans", "alice")
    assert rc == 1 and err.startswith("chatd: forbidden: ")
    assert (await alice.ok("remove-member", "plans", "bob")).strip() == "removed bob from #plans"


async def test_tail_prints_membership_and_read_events(daemon: Daemon) -> None:
    """The one-line forms of the new event kinds (format_event)."""
    from chatd.clientcli import format_event

    async with Client(daemon.url, name="alice", password="pw-secret-1") as alice, \
            Client(daemon.url, name="bob", password="pw-secret-1") as bob:
        assert bob.user is not None
        start = (await alice.boot()).resume_point
        tail = Tail(alice, since=start)
        plans = (await alice.create_channel("plans", private=True)).channel
        await alice.add_member(plans.id, bob.user.id)
        sent = await bob.send(plans.id, "hello")
        await alice.mark_read(plans.id, sent.message.seq)
        await bob.leave(plans.id)
        await tail.wait(lambda: len(tail.events) >= 5)
        lines = [format_event(e).split(" ", 2)[2] for e in tail.events]
        assert lines == [
            "#plans channel created", "#plans bob added by alice", "#plans <bob> hello",
            f"#plans read up to {sent.message.seq} (0 unread)", "#plans bob left",
        ]
        await tail.stop()
