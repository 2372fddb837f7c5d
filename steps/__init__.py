"""ZenML steps: thin typed wrappers over the labelspace library, one per file."""
