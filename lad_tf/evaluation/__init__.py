"""Measuring a defence: the attack protocol, baselines and the clean control, sweeps, the gradient-masking checks, the report and its figures."""
