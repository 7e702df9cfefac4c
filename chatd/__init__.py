"""chatd: a self-hosted realtime chat daemon. See README.md and docs/protocol.md."""

__version__ = "0.1.0"
