"""Measurements: grid quadrature, FID/IS and their extractors, the partition function and bits/dim, long-run chains."""
