"""The DARTS cell space as a package: geometry (below the rest), networks (with PC-DARTS partial channels),
costing, the Genotype and its drawing, and the plugin class (space.py, registered in search_spaces/registry.py)."""
