"""neurocast.weights."""
