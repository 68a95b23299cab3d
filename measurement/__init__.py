"""Measurement: evaluation (routing, adapters, identity) and benchmarks; nothing in the product imports it."""
