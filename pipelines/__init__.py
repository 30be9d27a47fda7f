"""Command lines (absl flags) over the lad_tf library: one module per job."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
