"""Deployment helpers. `labelspace.deploy.team` runs the team stack (PostgreSQL, an S3-compatible
store, an authenticated MLflow server) as local processes under one folder; see docs/team-server.md."""
