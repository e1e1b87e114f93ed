"""`medhub compare`: models and other tools side by side, against a reference or pairwise."""
