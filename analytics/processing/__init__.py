"""Processing: workers drain the queue into the stores, and take over the
work of workers that died."""
