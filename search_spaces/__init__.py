"""Shipped search spaces (YAML); ``automl search NAME`` finds them by file stem."""
