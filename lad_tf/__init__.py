"""lad_tf: harden a Keras classifier against adversarial examples before you serve it, measure it
honestly, and export it for TF Serving.

    import lad_tf
    hardened, training = lad_tf.harden(model, (x_train, y_train), eps=0.1)
    report = lad_tf.evaluate(hardened, (x_test, y_test), eps=0.1)
    lad_tf.export(hardened, "export/", model_card=report)
    x_adv = lad_tf.attacks.autoattack(model, x, y, eps=0.1)

Names load on first use, so `import lad_tf` starts no TensorFlow.
"""

__version__ = "0.1.0"
__all__ = ["harden", "evaluate", "export", "load_data", "attacks", "defences", "DEFENCES", "DEFAULT_DEFENCE"]

_API = ("harden", "evaluate", "export", "load_data")


def __getattr__(name):
  import importlib
  if name in _API:
    return getattr(importlib.import_module("lad_tf.api"), name)
  if name in ("attacks", "defences"):
    return importlib.import_module(f"lad_tf.{name}")
  if name in ("DEFENCES", "DEFAULT_DEFENCE"):
    return getattr(importlib.import_module("lad_tf.defences"), name)
  raise AttributeError(f"module 'lad_tf' has no attribute '{name}'")


def __dir__():
  return sorted(__all__ + ["__version__"])
