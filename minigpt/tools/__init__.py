"""The `minigpt` command's tools: report, plot-run, plot-schedules, predict, sample (minigpt/__main__.py)."""
