"""neurocast.backbone."""
