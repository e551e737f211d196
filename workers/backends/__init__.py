"""Inference backends: each turns a batch of network inputs into the fixed-size detection contract."""
