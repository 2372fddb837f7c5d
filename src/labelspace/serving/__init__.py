"""Serving: the MLflow pyfunc that ranks labels for images."""
