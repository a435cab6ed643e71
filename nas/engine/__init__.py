"""Floor 3: the search loop, its config, final selection, dominance diagnostics and the eval trainer."""
