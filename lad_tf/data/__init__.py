"""Datasets: the registry of named datasets (`datasets`) and one reader per file format (`sources`)."""
