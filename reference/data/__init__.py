"""Criteo data as training reads it: the MLPerf binary format (its one
definition, binary.py), the memory-mapped loader and the read-ahead pipeline.
This package only reads, and imports nothing of ``reference`` outside it: the
writers sit above it (reference/preprocess/ for raw Criteo files,
reference/synthetic.py for planted-teacher data)."""
