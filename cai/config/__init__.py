"""The two config files, typed and strict: `settings` (the shared pieces and YAML reading),
`curriculum` (curriculum.yaml: defaults, profiles, stages), `constitution` (constitution.yaml)."""
