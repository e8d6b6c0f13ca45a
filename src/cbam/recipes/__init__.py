"""Named training recipes: YAML files of config keys, one folder per task (classification/, detection/)."""
