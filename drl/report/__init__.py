"""Figures, tables and the comparison of metrics against their spread."""
