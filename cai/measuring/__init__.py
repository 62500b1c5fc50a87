"""Measuring a policy: `suites` (the dev suites and the test set through lm-eval), `benchmarks`
(the test set's files), `intervals` (every score's interval, paired differences), `win_rate`,
`gate` (promote a stage or not) and `verdict` (the final policy against the base)."""
