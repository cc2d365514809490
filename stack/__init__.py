"""Glue that starts several components at once on one machine (``up``)."""
