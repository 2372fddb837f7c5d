"""The model lifecycle against MLflow: tracking backend, registry, lineage."""
