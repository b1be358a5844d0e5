"""Workflows that chain the stages: prune, the export pipeline, sweeps, bundles."""
