"""Floor 2: a run's TensorBoard tags (monitor.py, the one place that names them) and the run report read from them."""
