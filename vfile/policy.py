"""vfile.policy (being built)."""
