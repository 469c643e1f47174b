"""Text encoders. Each turns a list of texts into Arrow vector columns, without Ray."""
