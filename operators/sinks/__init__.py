"""Writing to LanceDB tables."""
