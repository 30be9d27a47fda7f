"""Splits any functional classifier at a named layer into the encoder phi and the head f_p."""
import keras

from lad_tf.errors import ConfigError


def split_at_latent(model, layer_name="latent"):
  """Returns (phi, f_p): phi maps images to the layer's output, f_p maps that output to the model's
  outputs. Both share the model's layers (and weights), so f_p(phi(x)) == model(x).

  Raises ConfigError (a ValueError), naming the model's layers, when `layer_name` is missing or the
  head cannot be cut there (e.g. a skip connection bypasses the layer).
  """
  try:
    layer = model.get_layer(layer_name)
  except ValueError:
    names = ", ".join(l.name for l in model.layers)
    raise ConfigError(f"model '{model.name}' has no layer '{layer_name}'; pass --latent_layer, one of: {names}")
  if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or model.inputs is None:
    raise ConfigError("split_at_latent needs a functional Keras model (keras.Model(inputs, outputs))")
  latent = layer.output
  inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
  phi = keras.Model(inputs, latent, name=f"{model.name}_phi")
  try:
    head = keras.Model(latent, model.outputs[0], name=f"{model.name}_head")
  except ValueError as e:
    raise ConfigError(f"cannot cut model '{model.name}' at layer '{layer_name}': the layers after it "
                     f"also read earlier tensors ({e}); choose a layer every path goes through") from e
  return phi, head
