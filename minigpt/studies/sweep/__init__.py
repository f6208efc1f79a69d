"""A sweep's jobs (jobs.py), its study statistics (statistics.py), figures (figures.py) and report (report.py)."""
