"""lad_tf: Latent Adversarial Defence for TensorFlow/Keras classifiers shared as a service."""

__version__ = "0.1.0"
