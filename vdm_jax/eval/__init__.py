"""Evaluation: the Captioned Shapes probe and metrics."""
