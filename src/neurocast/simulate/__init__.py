"""neurocast.simulate."""
