"""The `analytics` command line."""
