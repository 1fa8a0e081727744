"""neurocast.progress."""
