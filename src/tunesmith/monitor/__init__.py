"""Served-model monitoring: drift signals, feedback export, retraining (docs/monitoring.md)."""
