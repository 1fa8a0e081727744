"""neurocast.anomaly."""
