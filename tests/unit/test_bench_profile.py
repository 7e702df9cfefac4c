"""bench.profile --layers: which layer a sampled stack counts for."""

from __future__ import annotations

from pathlib import Path

from bench.profile import OTHER, layer_of, layers

LOOP = ("<module> (chatd:6)", "main (chatd/cli.py:323)", "Runner.run (asyncio/runners.py:118)")
WRITER = ("Thread._bootstrap (threading.py:1002)", "_worker (concurrent/futures/thread.py:83)",
          "SqliteBackend.write_here (chatd/sqlite_store.py:347)",
          "Rules._batch (chatd/rules.py:258)")


def test_a_waiting_stack_is_left_out() -> None:
    assert layer_of((*WRITER, "_pysqlite_query_execute (cursor.c:896)",
                     "pthread_cond_timedwait (libc.so.6)", "0x7f9 (libc.so.6)")) is None
    assert layer_of((*LOOP, "uv__io_poll (linux.c:1546)", "epoll_pwait (libc.so.6)")) is None
    assert layer_of((*WRITER, "sqlite3WalSync (libsqlite3.so)", "fdatasync (libc.so.6)")) is None


def test_the_innermost_known_frame_names_the_layer() -> None:
    # a syscall of sqlite's counts for sqlite, not for the rules that called it
    assert layer_of((*WRITER, "sqlite3WalFrames (libsqlite3.so.0.8.6)",
                     "pwrite64 (libc.so.6)")).startswith("sqlite")
    assert layer_of((*WRITER, "Rules._send (chatd/rules.py:531)")).startswith("rules")
    # uvloop's write of a reply is a socket write; its callback into Python is not
    assert layer_of((*LOOP, "UVStream__try_write (loop.c:106818)",
                     "write (libc.so.6)")).startswith("socket")
    assert layer_of((*LOOP, "Loop__on_idle (loop.c:19387)",
                     "Session._flush (chatd/connection.py:352)",
                     "WebSocketSink.write (chatd/sink.py:74)")).startswith("reply")
    assert layer_of((*LOOP, "Connection.data_received (websockets/asyncio/connection.py:1091)",
                     "Frame.parse (websockets/frames.py:323)")).startswith("websockets")
    assert layer_of((*LOOP, "Loop__on_idle (loop.c:19387)")).startswith("event loop")
    assert layer_of(("<module> (x.py:1)", "f (x.py:2)")) == OTHER


def test_layers_sums_to_the_whole_and_scales_per_ack(tmp_path: Path) -> None:
    prof = tmp_path / "p.txt"
    prof.write_text(
        ";".join((*WRITER, "sqlite3VdbeExec (libsqlite3.so)")) + " 3\n"
        + ";".join((*LOOP, "Frame.parse (websockets/frames.py:323)")) + " 1\n"
        + ";".join((*LOOP, "epoll_pwait (libc.so.6)")) + " 50\n"
        + ";".join((*WRITER, "_scrypt (chatd/crypto.py:82)")) + " 4\n"
    )
    text = layers(str(prof), per_ack=100.0)
    assert "50 waiting, 4 logging in" in text
    assert "75.0%" in text and "75.0" in text.split("sqlite")[1]
    main_only = layers(str(prof), main_only=True)
    assert "100.0%" in main_only and "sqlite" not in main_only
