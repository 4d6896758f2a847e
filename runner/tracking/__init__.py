"""Tracking: per-layer statistics and their delivery to MLflow."""
