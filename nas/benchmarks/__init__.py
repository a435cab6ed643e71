"""Floor 2: benchmarks and studies that experiments share: the NAS-Bench-201 table and its ranking study, latency
measurement, the one-shot study."""
