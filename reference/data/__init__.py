"""Criteo data: the MLPerf binary format and synthetic data in that format."""
