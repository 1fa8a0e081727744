"""neurocast.registration."""
