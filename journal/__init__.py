"""Durable state on LMDB: deferred scans, verdicts, quarantine records. A leaf
package: imports neither `vfile` nor `scanner`."""
