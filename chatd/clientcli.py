"""Operator commands on top of chatd.client (login, channels, send, tail, ...)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client subcommands to the ``chatd`` parser. Each sets ``func``."""
