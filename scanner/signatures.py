"""ClamAV hash signatures (.hdb md5:size:name, .hsb sha256:size:name) and EICAR.

`load(directory)` reads every .hdb/.hsb file into a `Signatures` value whose
`version` is a digest of the loaded entries, so the same signatures give the
same version (cached verdicts stay valid across a restart) and any change to
them gives a new one. Size may be `*` (any size), as ClamAV allows with
`.hdb` entries in newer versions. Bad lines are reported with file and line
number (`SignatureError`), never silently dropped.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field

from vfile.scanner.trusted import open_trusted_dir, open_trusted_file

log = logging.getLogger(__name__)

EICAR = (b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*")
EICAR_NAME = "Eicar-Test-Signature"
#: EICAR may be followed by whitespace up to this total size
EICAR_MAX = 128
_WHITESPACE = b" \t\r\n\x1a"


class SignatureError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Signatures:
    md5: dict[tuple[str, int | None], str] = field(default_factory=dict)
    sha256: dict[tuple[str, int | None], str] = field(default_factory=dict)
    version: str = "eicar-only"

    def __len__(self) -> int:
        return len(self.md5) + len(self.sha256)

    def match(self, size: int, head: bytes, md5: str, sha256: str) -> str | None:
        """The signature name for content with these digests, or None.

        `head` is the first EICAR_MAX + 1 bytes (enough to recognise EICAR).
        """
        if is_eicar(head, size):
            return EICAR_NAME
        for table, digest in ((self.md5, md5), (self.sha256, sha256)):
            name = table.get((digest, size)) or table.get((digest, None))
            if name:
                return name
        return None


def is_eicar(head: bytes, size: int) -> bool:
    if size > EICAR_MAX or not head.startswith(EICAR):
        return False
    return all(b in _WHITESPACE for b in head[len(EICAR): size])


def parse_line(line: str, hexlen: int) -> tuple[str, int | None, str]:
    parts = line.split(":")
    if len(parts) < 3:
        raise SignatureError("expected HASH:SIZE:NAME")
    digest, size_text, name = parts[0].strip().lower(), parts[1].strip(), parts[2].strip()
    if len(digest) != hexlen or any(c not in "0123456789abcdef" for c in digest):
        raise SignatureError(f"hash must be {hexlen} hex digits")
    if size_text == "*":
        size = None
    elif size_text.isdigit():
        size = int(size_text)
    else:
        raise SignatureError(f"size {size_text!r} is not a number or *")
    if not name or any(c.isspace() for c in name) or not name.isprintable():
        raise SignatureError("signature name must be printable without spaces")
    return digest, size, name


def load(directory: str | None) -> Signatures:
    """Load all .hdb/.hsb files in `directory` (None: EICAR only), refusing a directory
    or a file another user could have written (scanner.trusted): one who can would drop
    a signature, or plant one that quarantines any file they like (s26)."""
    if directory is None:
        return Signatures()
    md5: dict[tuple[str, int | None], str] = {}
    sha256: dict[tuple[str, int | None], str] = {}
    try:
        pfd = open_trusted_dir(directory)
        try:
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
        finally:
            os.close(pfd)
        try:
            names = sorted(os.listdir(dfd))
        finally:
            os.close(dfd)
    except OSError as err:
        raise SignatureError(f"cannot read signature directory {directory!r}: "
                             f"{err.strerror}") from None
    for fname in names:
        ext = os.path.splitext(fname)[1].lower()
        if ext not in (".hdb", ".hsb"):
            continue
        table, hexlen = (md5, 32) if ext == ".hdb" else (sha256, 64)
        path = os.path.join(directory, fname)
        try:
            # (each file walked again from /: a file's own symlink is walked as well)
            fd = open_trusted_file(path)
        except OSError as err:
            raise SignatureError(f"cannot read signature file {path!r}: "
                                 f"{err.strerror}") from None
        with open(fd, "rb") as f:
            for lineno, data in enumerate(f, 1):
                try:
                    # A line that is not UTF-8 is a bad line like any other: one clear
                    # error (it was a traceback, and the end of `appliance serve` on a
                    # reload, s26)
                    line = data.decode("utf-8").strip()
                    if not line or line.startswith("#"):
                        continue
                    digest, size, name = parse_line(line, hexlen)
                except (SignatureError, UnicodeDecodeError) as err:
                    raise SignatureError(f"{path}:{lineno}: {err}") from None
                table[(digest, size)] = name
    h = hashlib.sha256()
    for tag, table in ((b"md5", md5), (b"sha256", sha256)):
        entries = sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1] or -1))
        for (digest, size), name in entries:
            h.update(b"%s:%s:%s:%s\n" % (tag, digest.encode(), str(size).encode(), name.encode()))
    version = f"{len(md5) + len(sha256)}-{h.hexdigest()[:12]}"
    log.info("loaded %d hash signatures from %r (version %s)", len(md5) + len(sha256), directory,
             version)
    return Signatures(md5, sha256, version)
