"""What the user runs around the loop: `launch` (flags and config to a checked run), `commands`
(prompts, report, export, verify, plan), `rerun` (one stage under a new constitution), `budget`
(cost and time), `report` and `plots`, `release` (the dataset and model cards)."""
