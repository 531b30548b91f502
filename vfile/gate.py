"""vfile.gate (being built)."""
