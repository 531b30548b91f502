"""vfile.mount (being built)."""
