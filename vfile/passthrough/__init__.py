"""passthrough."""
