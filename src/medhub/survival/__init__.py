"""Survival analytics (lifelines): Cox models, Kaplan–Meier groups, concordance, added value; `medhub survival`."""
