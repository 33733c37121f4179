"""Server addresses: what may be logged of them, and where they point."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["endpoint", "redact"]


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe for logs and error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable address>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def endpoint(url: str, default_port: int) -> str:
    """``host:port`` of a server URL, for "cannot reach ..." messages."""
    try:
        parts = urlsplit(url)
        port = parts.port or default_port
    except ValueError:
        return "<unparseable address>"
    return f"{parts.hostname or 'localhost'}:{port}"
