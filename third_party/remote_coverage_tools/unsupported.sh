#!/bin/sh
# Placeholder for Bazel's coverage tools, which are not available offline.
echo "remote_coverage_tools stub: 'bazel coverage' is not supported in this offline setup;" >&2
echo "run 'pytest --cov' (pytest-cov) from the virtual environment instead." >&2
exit 1
