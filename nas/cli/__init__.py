"""Floor 5: console entry points that belong to no lower floor (nas-info, nas-plot, nas-report)."""
