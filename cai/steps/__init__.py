"""The loop's steps, one module a step, in the order bootstrap.py's `run_stage` calls them.

Each step is a function named for the step, `step(ctx, st, policy, ...)`: `ctx` is bootstrap.py's
`Context` (the run folder, the server and the settings; `ctx.jobs` runs a program over many
requests), `st` the stage's config, `policy` the name the current model is served under. It writes
its records under the stage's folder and returns its figures for the manifest.
"""
