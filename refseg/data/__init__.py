"""Benchmarks: readers of the published formats, samples, masks, the synthetic benchmark."""
