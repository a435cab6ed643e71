"""Published and found genotype records, one JSON file per genotype (see nas.genotype.load_genotype)."""
