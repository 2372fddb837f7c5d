"""Evaluation: metrics, calibration, zero-shot, the report and its plots."""
