"""ZenML pipelines of labelspace, the stack they run on, and the `labelspace run` command."""
