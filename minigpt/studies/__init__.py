"""Studies built on finished runs: sweep reports and statistics, loss laws and prediction, the LR range test."""
