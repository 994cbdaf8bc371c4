"""`tunesmith sweep`: find the recipe by the task metric on the held-out set, within a time budget.

spec.py: the grid and the sweep's record (sweep.json); budget.py: each trial's time from the planner, calibrated by
the trials already run, and what the budget lets run; trials.py: the Optuna study (SQLite in the sweep folder), each
trial trained as a normal run and evaluated by `tunesmith eval`'s own function, pruned at checkpoints when clearly
losing; report.py: results.json, the 80-column table, chart.html and the winning recipe.
"""
