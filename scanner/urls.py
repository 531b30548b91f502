"""Parsing appliance and listen URLs, with messages a user can act on.

Appliance URLs: `clamd://HOST:PORT`, `clamd:///path/to/clamd.sock`,
`icap://HOST[:PORT]/SERVICE`. Listen URLs (for the built-in appliance and the
fault proxy): `tcp://HOST:PORT` (port 0 picks a free one), `unix:///path`.
Every parse error is a `ValueError` naming the URL and what is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

ICAP_DEFAULT_PORT = 1344

#: "embedded": the built-in engine in this process (scanner/embedded.py), never parsed
Kind = Literal["clamd", "icap", "embedded"]


@dataclass(frozen=True, slots=True)
class Address:
    """A socket address: TCP (host, port) or a unix socket path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.path else f"tcp://{_host(self.host)}:{self.port}"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True, slots=True)
class ApplianceURL:
    kind: Kind
    address: Address
    service: str = ""  # ICAP only
    text: str = ""

    def __str__(self) -> str:
        return self.text


def _port(url: str, raw: str | None, default: int | None) -> int:
    if raw is None:
        if default is None:
            raise ValueError(f"appliance URL {url!r}: a port is required (e.g. clamd://127.0.0.1:3310)")
        return default
    return raw_port(url, raw)


def raw_port(url: str, raw: str) -> int:
    # isascii: str.isdigit and int() take any script's digits ("٣٣١٠" was port 3310)
    if not raw.isascii() or not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ValueError(f"URL {url!r}: port {raw!r} is not a number from 0 to 65535")
    return int(raw)


#: the longest DNS name
MAX_HOST = 253


def _plain(url: str, what: str) -> str:
    """`url` stripped, if it is printable ASCII without spaces (b27): urlsplit drops
    tabs and newlines silently, and a space or control character would reach an ICAP
    request line, a socket path or a log line."""
    text = url.strip()
    if not text.isascii() or any(not c.isprintable() or c.isspace() for c in text):
        raise ValueError(f"{what} URL {url!r}: only printable ASCII without spaces")
    return text


def _split_hostport(url: str, netloc: str) -> tuple[str, str | None]:
    if "@" in netloc:  # (urlsplit took "user:pw@host" for the host before the port)
        raise ValueError(f"URL {url!r}: a user or password is not supported")
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(f"URL {url!r}: expected [IPV6]:PORT")
        return host, (rest[1:] if rest.startswith(":") else None)
    host, sep, raw = netloc.rpartition(":")
    port = raw if sep else None
    if not sep:
        host = netloc
    if ":" in host:  # "host:3310:3310" named the host "host:3310"
        raise ValueError(f"URL {url!r}: an IPv6 address goes in brackets ([::1]:3310)")
    if len(host) > MAX_HOST:
        raise ValueError(f"URL {url!r}: a host name is at most {MAX_HOST} characters")
    return host, port


def parse_appliance_url(url: str) -> ApplianceURL:
    """Parse one appliance URL; raise ValueError with a clear message."""
    parts = urlsplit(_plain(url, "appliance"))
    scheme = parts.scheme.lower()
    if scheme == "clamd":
        if parts.netloc == "":
            if not parts.path.startswith("/") or parts.path == "/":
                raise ValueError(f"appliance URL {url!r}: expected clamd:///absolute/path.sock")
            return ApplianceURL("clamd", Address(path=parts.path), text=url)
        host, raw = _split_hostport(url, parts.netloc)
        if not host:
            raise ValueError(f"appliance URL {url!r}: missing host")
        if parts.path not in ("", "/"):
            raise ValueError(f"appliance URL {url!r}: a clamd TCP URL has no path")
        port = _port(url, raw, None)
        if port == 0:
            raise ValueError(f"appliance URL {url!r}: port 0 is not a valid appliance port")
        return ApplianceURL("clamd", Address(host=host, port=port), text=url)
    if scheme == "icap":
        host, raw = _split_hostport(url, parts.netloc)
        if not host:
            raise ValueError(f"appliance URL {url!r}: missing host")
        service = parts.path.strip("/")
        if not service:
            raise ValueError(f"appliance URL {url!r}: missing ICAP service (icap://HOST:PORT/SERVICE)")
        port = _port(url, raw, ICAP_DEFAULT_PORT)
        if port == 0:
            raise ValueError(f"appliance URL {url!r}: port 0 is not a valid appliance port")
        return ApplianceURL("icap", Address(host=host, port=port), service=service, text=url)
    raise ValueError(f"appliance URL {url!r}: unknown scheme {parts.scheme!r} "
                     "(expected clamd://HOST:PORT, clamd:///path.sock or icap://HOST:PORT/SERVICE)")


def parse_listen_url(url: str) -> Address:
    """Parse `tcp://HOST:PORT` or `unix:///path`; raise ValueError with a clear message."""
    parts = urlsplit(_plain(url, "listen"))
    scheme = parts.scheme.lower()
    if scheme == "unix":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise ValueError(f"listen URL {url!r}: expected unix:///absolute/path.sock")
        return Address(path=parts.path)
    if scheme == "tcp":
        host, raw = _split_hostport(url, parts.netloc)
        if not host or raw is None:
            raise ValueError(f"listen URL {url!r}: expected tcp://HOST:PORT")
        return Address(host=host, port=raw_port(url, raw))
    raise ValueError(f"listen URL {url!r}: expected tcp://HOST:PORT or unix:///path")


def address_of(url: str) -> Address:
    """The socket address of an appliance URL or a listen URL."""
    scheme = urlsplit(url.strip()).scheme.lower()
    if scheme in ("tcp", "unix"):
        return parse_listen_url(url)
    return parse_appliance_url(url).address
