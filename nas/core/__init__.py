"""Floor 0: what spaces, controllers and everything above build on (errors, registry lookup, architecture types,
device, distributed helpers, metrics, BatchNorm helpers, checkpoints, config, data, records, the latency table format).
Imports nothing of the project above it."""
