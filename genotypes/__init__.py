"""Published and found genotype records, one JSON file per genotype (see search_spaces.darts.genotype.load_genotype)."""
