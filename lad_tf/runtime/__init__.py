"""How training runs: the one executor (`execution`), strategies (`distribute`), progress lines, the per-example losses, classifier training and the atomic file writes every stage uses."""
