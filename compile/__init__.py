"""The pipeline driver: frontends, build, export and bundle (tuning and benchmarks join here)."""
