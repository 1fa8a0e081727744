"""neurocast.report."""
