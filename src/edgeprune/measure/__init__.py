"""Measurement: latency benchmarks, statistics, memory, the environment, the CI regression gate."""
