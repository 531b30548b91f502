"""vfile.fs (being built)."""
