"""Data: sources, manifest and split, preprocessing, torch datasets."""
