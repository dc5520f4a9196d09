"""Datasets: raw formats, preprocessing (Appendix B), parallel decoding, downloads; `prepare`."""
