"""The ADS server: protocol (stream.py, decide.py), per-stream state (subscription.py),
and what to send (plan.py), kept apart so each can be read and tested alone."""

from .ads import AdsServer, start

__all__ = ["AdsServer", "start"]
