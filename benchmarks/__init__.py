"""Benchmarks: the harness behind `dfx bench` and the scripts behind the README's numbers."""
