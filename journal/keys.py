"""LMDB keys of the journal's tables: pure functions, no I/O.

Invariants:
- A path key is `xxh3_64(path bytes)` (8 bytes, big-endian) followed by a
  2-byte disambiguator. Paths of any length fit (LMDB keys are at most 511
  bytes); two paths with the same hash get different disambiguators, and the
  stored value always holds the full path, so a lookup scans the (almost
  always one-element) range of keys sharing the hash and compares paths.
- An order key is the entry's `order` (8 bytes big-endian) followed by its
  path key, so the order index sorts oldest first and is unique per entry.
- A profile index key is the profile name (utf-8), a NUL, the entry's
  `order` (8 bytes big-endian) and its path key: one range per profile,
  oldest first.
- A verdict key is the identity's five integers followed by xxh3_64 of the
  signature version; the value repeats both, and a read checks them, so a
  hash collision can only cause a miss, never a wrong verdict. All verdicts
  of one file (dev, ino) share a 16-byte prefix, so storing one can drop
  those of the file's older versions (`verdict_prefix`).
"""

from __future__ import annotations

import os
import struct

import xxhash

from vfile.journal.records import Identity

HASH_LEN = 8
PATH_KEY_LEN = HASH_LEN + 2
MAX_DISAMBIGUATOR = 0xFFFF

_U64 = struct.Struct(">Q")
_IDENT = struct.Struct(">QQqqq")
_U16 = struct.Struct(">H")


def path_bytes(path: str) -> bytes:
    """The bytes the kernel would see (undecodable bytes round-trip via surrogateescape)."""
    try:
        return os.fsencode(path)
    except UnicodeEncodeError:
        # A lone surrogate os never produces (outside surrogateescape's range): still a
        # key, never a crash. Only hashed, so it need not be what the kernel would see.
        return path.encode("utf-8", "surrogatepass")


def path_hash(path: str) -> bytes:
    """The 8-byte prefix shared by every key a path could have."""
    return _U64.pack(xxhash.xxh3_64_intdigest(path_bytes(path)))


def path_key(path_hash_: bytes, disambiguator: int) -> bytes:
    if not 0 <= disambiguator <= MAX_DISAMBIGUATOR:
        raise ValueError(f"disambiguator out of range: {disambiguator}")
    return path_hash_ + _U16.pack(disambiguator)


def disambiguator(key: bytes) -> int:
    return int(_U16.unpack_from(key, HASH_LEN)[0])


def order_key(order: int, pkey: bytes) -> bytes:
    return _U64.pack(order) + pkey


def order_key_split(key: bytes) -> tuple[int, bytes]:
    return int(_U64.unpack_from(key)[0]), bytes(key[8:])


def profile_bytes(profile: str) -> bytes:
    return profile.encode("utf-8", "surrogateescape")


def profile_prefix(profile: str) -> bytes:
    """Every index key of a profile starts with this (profile names hold no NUL)."""
    return profile_bytes(profile) + b"\0"


def profile_key(profile: str, order: int, pkey: bytes) -> bytes:
    """Key of the profile index: the profile's prefix, the entry's order, its path key."""
    return profile_prefix(profile) + _U64.pack(order) + pkey


def profile_key_order(key: bytes, prefix_len: int) -> int:
    return int(_U64.unpack_from(key, prefix_len)[0])


def profile_key_path(key: bytes) -> bytes:
    """The path key at the end of a profile index key."""
    return bytes(key[-PATH_KEY_LEN:])


def verdict_key(identity: Identity, sig_version: str) -> bytes:
    # dev/ino are unsigned in the kernel, sizes and times signed; pack each
    # with its own signedness so every real stat value fits.
    return (_IDENT.pack(identity.dev, identity.ino, identity.size, identity.mtime_ns,
                        identity.ctime_ns)
            + _U64.pack(xxhash.xxh3_64_intdigest(sig_version.encode("utf-8", "surrogatepass"))))


_DEV_INO = struct.Struct(">QQ")
_CTIME_AT = 32  # dev, ino, size, mtime_ns come first in a verdict key
_I64 = struct.Struct(">q")


def verdict_prefix(dev: int, ino: int) -> bytes:
    """What every verdict key of one file (dev, ino) starts with."""
    return _DEV_INO.pack(dev, ino)


def verdict_key_ctime(key: bytes) -> int:
    """The ctime_ns a verdict key was made for."""
    return int(_I64.unpack_from(key, _CTIME_AT)[0])


def u64(n: int) -> bytes:
    return _U64.pack(n)


def from_u64(b: bytes) -> int:
    return int(_U64.unpack(b)[0])
