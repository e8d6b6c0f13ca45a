"""Named training recipes (YAML files of TrainConfig keys)."""
