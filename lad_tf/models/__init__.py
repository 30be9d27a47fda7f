"""The model zoo (classifiers, decoders, black-box models) and the phi / f_p split."""
from lad_tf.models import classifiers, generators
from lad_tf.models.split import split_at_latent

CLASSIFIERS = {
    "lenet5": classifiers.lenet5,
    "madry_cnn": classifiers.madry_cnn,
    "svhnnet": classifiers.svhnnet,
    "celebanet": classifiers.celebanet,
    "black_cnn": classifiers.black_cnn,
}
GENERATORS = {
    "lenet5_decoder": generators.lenet5_decoder,
    "lenet5_decoder_blocked": generators.lenet5_decoder_blocked,
    "svhnnet_decoder": generators.svhnnet_decoder,
    "svhnnet_decoder_light": generators.svhnnet_decoder_light,
    "celebanet_decoder": generators.celebanet_decoder,
    "conv_decoder": generators.conv_decoder,
}


def _lookup(table, kind, name):
  if name not in table:
    raise KeyError(f"unknown {kind} '{name}'; known: {', '.join(sorted(table))}")
  return table[name]


def build_classifier(name, input_shape, num_classes):
  """A fresh zoo classifier returning logits, its latent layer named `latent`."""
  return _lookup(CLASSIFIERS, "classifier", name)(tuple(input_shape), num_classes)


def build_generator(name, latent_dim, image_shape):
  """A fresh zoo decoder from `latent_dim` latents to images of `image_shape` in [0, 1]."""
  return _lookup(GENERATORS, "generator", name)(latent_dim, tuple(image_shape))


__all__ = ["CLASSIFIERS", "GENERATORS", "build_classifier", "build_generator", "split_at_latent"]
