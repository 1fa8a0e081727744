"""neurocast.cli."""
