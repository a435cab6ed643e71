"""Floor 4: sweeps of searches and trainings: spec, trial, results and the nas-sweep driver."""
