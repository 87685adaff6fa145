"""Data sets: manifests, splits, the decoded-audio cache and fixed-length clips."""
