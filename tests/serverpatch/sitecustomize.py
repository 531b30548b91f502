"""Imported at start-up by a mount server that a test started with `patched(...)`
(tests/serverpatches.py puts this directory on its PYTHONPATH): runs the Python file
named by VFILE_TEST_PATCH, which patches the server's modules (a fault no real disk
or kernel gives on demand). Never on a real mount: only tests set the variable."""

from __future__ import annotations

import os
import runpy

_PATCH = os.environ.get("VFILE_TEST_PATCH")
if _PATCH:
    runpy.run_path(_PATCH)
