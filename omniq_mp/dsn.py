"""Server addresses: whether they are well formed, what may be logged of them, and where
they point."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

__all__ = ["DSN_FORM", "dsn_problem", "endpoint", "redact"]

DSN_FORM = "postgresql://user:password@host:port/database"

_SCHEMES = ("postgresql", "postgres")
_BRACKETED = re.compile(r"\[[^\]]+\](?::(.*))?")  # [IPv6 address], then maybe :port


def dsn_problem(dsn: str) -> str | None:
    """What makes ``dsn`` unusable as a PostgreSQL address, or None when it reads as one
    (whether the server is there is only known by connecting). Checked where a DSN enters,
    because the driver reports a malformed one only at the first connection, as a
    traceback or as a failure to reach a server (localhost, when it finds no host).

    The answer never quotes the DSN: a malformed one may split anywhere, its password too.
    """
    try:
        parts = urlsplit(dsn)
    except ValueError:
        # The error's own text may quote the whole user:password@host part.
        return (
            "it is not a well-formed URL: an IPv6 host goes in [brackets], and @ : / [ ] in "
            "the user name or password must be %-encoded"
        )
    if parts.scheme not in _SCHEMES:
        return "it must start with postgresql:// or postgres://"
    # The driver splits at the first @ (urlsplit at the last): judge the hosts as it will.
    hosts = parts.netloc.partition("@")[2] if "@" in parts.netloc else parts.netloc
    problem = _hosts_problem(hosts) if hosts else None
    return problem or _query_problem(parts.query)


def _hosts_problem(hosts: str) -> str | None:
    """What is wrong with ``host[:port],...``, as the driver reads it, or None."""
    for host in hosts.split(","):
        if not host:
            return "its list of hosts has an empty entry"
        if host.startswith("/"):  # a Unix socket's folder: no port there
            continue
        if host.startswith("["):
            match = _BRACKETED.fullmatch(host)
            if match is None:
                return "an IPv6 host must be [address] or [address]:port"
            port = match.group(1) or ""
        else:
            port = host.partition(":")[2]
        if port and not _is_port(unquote(port)):
            return "its port must be a whole number from 1 to 65535"
    return None


def _query_problem(query: str) -> str | None:
    """What is wrong with the options after ``?`` (the driver reads them strictly)."""
    if not query:
        return None
    try:
        options = parse_qs(query, strict_parsing=True)
    except ValueError:
        return "the options after ? must be name=value pairs joined by &"
    ports = options.get("port", [""])[-1]
    if ports and not all(_is_port(port) for port in ports.split(",")):
        return "its port option must be whole numbers from 1 to 65535"
    hosts = options.get("host", [""])[-1]
    return _hosts_problem(hosts) if hosts else None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


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
