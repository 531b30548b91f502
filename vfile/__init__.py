"""vfile: a fail-safe storage scanning filter (FUSE + trio).

Package map (dependencies point one way):

    vfile.cli    -> the typer shell, the only importer of typer
    vfile.mount  -> composition root: builds scanners, journal, filesystem
    vfile.passthrough.fs     -> pyfuse3.Operations (thin handlers, one errno mapping)
    vfile.filter.gate   -> the scan-on-open / after-write machinery
    vfile.filter.policy -> the pure allow / deny / defer decision
    scanner/     -> appliance clients, pool, built-in appliance (leaf)
    journal/     -> durable LMDB state (leaf)
"""

__version__ = "0.1.0"
