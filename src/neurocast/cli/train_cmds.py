"""``neurocast train MODEL ...``: train the models neurocast ships (one subcommand per model)."""

from __future__ import annotations

import click


@click.group()
def train() -> None:
    """Train a model: 'neurocast train progress' (forecaster), 'neurocast train calibrate' (its
    uncertainty, on held-out subjects) or 'neurocast train anomaly'."""
