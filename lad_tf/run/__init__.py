"""Runs of the defend command: the work directory, the run's config, its stages, the plan and the evaluation of a finished work directory."""
