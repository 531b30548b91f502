"""The simulated guest's data directory, generated from a seed (deterministic).

Layout (relative to the guest root):

    hot/file-NN.dat        read again and again by the readers (scanned once, then cached)
    data/file-NNNN.dat     read once each, in order, by the indexer (a backup or search job)
    state/writer-N.db      rewritten by writer N; flushed by the migration's freeze step
    downloads/eicar.com    EICAR: opened before the outage, denied in every mode
    mail/attachment-N.bin  carry a generated .hdb signature; first opened during the outage
    signatures/vfile-sim.hdb   the generated signatures (for the built-in appliance)
    plant/                 outside the guest: what is copied in through the mount during
                           the outage (an EICAR dropper and a signature dropper)

`Guest` says which paths are infected and with what, so the report can tell
caught from missed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from vfile.scanner.signatures import EICAR, EICAR_NAME

HOT_FILES = 12
ATTACHMENTS = 2
SIG_PREFIX = "Vfile.Sim"


@dataclass
class Guest:
    root: Path
    signatures: Path
    plant_dir: Path
    hot: list[str] = field(default_factory=list)
    cold: list[str] = field(default_factory=list)
    state: list[str] = field(default_factory=list)
    #: path (relative) → signature name, for files present at the start
    infected: dict[str, str] = field(default_factory=dict)
    #: name in plant_dir → signature name, copied in during the outage
    planted: dict[str, str] = field(default_factory=dict)
    eicar: str = "downloads/eicar.com"
    attachments: list[str] = field(default_factory=list)

    def all_infected(self) -> dict[str, str]:
        return {**self.infected, **{f"planted/{n}": s for n, s in self.planted.items()}}


def _content(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def _hdb_line(data: bytes, name: str) -> str:
    return f"{hashlib.md5(data).hexdigest()}:{len(data)}:{name}\n"


def generate(base: Path, *, files: int, writers: int, seed: int) -> Guest:
    """Write the guest under base/guest, signatures under base/signatures, plants
    under base/plant; return what is where."""
    rng = random.Random(seed)
    guest = Guest(root=base / "guest", signatures=base / "signatures", plant_dir=base / "plant")
    for d in (guest.root / "hot", guest.root / "data", guest.root / "state",
              guest.root / "downloads", guest.root / "mail", guest.root / "planted",
              guest.signatures, guest.plant_dir):
        d.mkdir(parents=True, exist_ok=True)
    hdb: list[str] = []

    n_cold = max(1, files - HOT_FILES - writers - 1 - ATTACHMENTS)
    for i in range(HOT_FILES):
        rel = f"hot/file-{i:02d}.dat"
        (guest.root / rel).write_bytes(_content(rng, rng.randint(2048, 32768)))
        guest.hot.append(rel)
    for i in range(n_cold):
        rel = f"data/file-{i:04d}.dat"
        (guest.root / rel).write_bytes(_content(rng, rng.randint(1024, 16384)))
        guest.cold.append(rel)
    for i in range(writers):
        rel = f"state/writer-{i}.db"
        (guest.root / rel).write_bytes(_content(rng, 8192))
        guest.state.append(rel)

    (guest.root / guest.eicar).write_bytes(EICAR)
    guest.infected[guest.eicar] = EICAR_NAME
    for i in range(ATTACHMENTS):
        rel = f"mail/attachment-{i}.bin"
        data = b"MZ" + _content(rng, 4094)
        name = f"{SIG_PREFIX}.Attachment-{i}"
        (guest.root / rel).write_bytes(data)
        hdb.append(_hdb_line(data, name))
        guest.infected[rel] = name
        guest.attachments.append(rel)

    (guest.plant_dir / "dropper.com").write_bytes(EICAR)
    guest.planted["dropper.com"] = EICAR_NAME
    dropper = b"MZ" + _content(rng, 6142)
    (guest.plant_dir / "dropper.exe").write_bytes(dropper)
    hdb.append(_hdb_line(dropper, f"{SIG_PREFIX}.Dropper"))
    guest.planted["dropper.exe"] = f"{SIG_PREFIX}.Dropper"

    (guest.signatures / "vfile-sim.hdb").write_text("".join(hdb))
    return guest
