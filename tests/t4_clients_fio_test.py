"""fio with data verification through a scanning mount, against a native directory.

Random reads and writes by several jobs at once with three I/O paths (pread/
pwrite, shared writable mmap, O_DIRECT through libaio), every block checked
with crc32c when read back, then a second run that only verifies what the
first left on disk (write-only jobs: with randrw fio cannot know afterwards
which blocks hold verifiable data). Small files, so it runs in seconds; fio's random
generator is seeded the same in both places, so both must do the same I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clients import Scanning, run, scanning_mount

pytestmark = pytest.mark.mount

JOBS = """
[global]
directory={dir}
size=2m
bs=4k
rw={rw}
verify=crc32c
verify_fatal=1
verify_backlog=64
randrepeat=1
numjobs=2
group_reporting=0

[psync]
ioengine=psync

[mmap]
ioengine=mmap

[direct]
ioengine=libaio
direct=1
iodepth=8
"""


@pytest.fixture(scope="module")
def scanning() -> Iterator[Scanning]:
    with scanning_mount() as s:
        yield s


def fio(place: Path, rw: str, *extra: str) -> list[tuple[Any, ...]]:
    jobfile = place / f"{rw}.fio"
    jobfile.write_text(JOBS.format(dir=place / rw, rw=rw))
    (place / rw).mkdir(exist_ok=True)
    # (in `place`: fio leaves its verify state files in the working directory)
    res = run(["fio", "--output-format=json", *extra, jobfile], cwd=place)
    report = json.loads(res.stdout[res.stdout.index("{"):])
    jobs = [(j["jobname"], j["error"], j["read"]["io_bytes"], j["write"]["io_bytes"])
            for j in report["jobs"]]
    assert all(error == 0 for _, error, _, _ in jobs), jobs
    return sorted(jobs)


def test_fio_random_read_write_verified(scanning: Scanning) -> None:
    pair = scanning.pair()
    native, mounted = (fio(place, "randrw") for place in pair.both())
    assert mounted == native
    assert len(mounted) == 6 and all(r > 0 and w > 0 for _, _, r, w in mounted)


def test_fio_verify_only_rereads_what_a_writer_left(scanning: Scanning) -> None:
    pair = scanning.pair()
    native, mounted = (fio(place, "randwrite") for place in pair.both())
    assert mounted == native
    # A second run re-reads and checks every block without writing.
    native, mounted = (fio(place, "randwrite", "--verify_only") for place in pair.both())
    assert mounted == native
    assert all(r > 0 for _, _, r, _ in mounted), mounted  # (it counts as if written)
