"""Challenge-grade evaluation: task specs, submissions, validation, metrics with CIs, ranking, leaderboards."""
