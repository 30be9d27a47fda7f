"""Decoders G mapping latents back to images (Eq. 2): Appendix Tables XI, XIII, XV, and a generic one.

All end in a sigmoid, since lad_tf keeps images in [0, 1] (the paper's tanh suits [-1, 1] images).
"""
import keras
from keras import layers

from lad_tf.models.space_to_depth import SpaceToDepthConv2D


def lenet5_decoder(latent_dim=500, image_shape=(28, 28, 1), image_block=1):
  """Table XI. With valid padding the listed kernels and strides give 4 -> 14 -> 12 -> 35 -> 32 -> 28.
  The table omits channel counts; we use 32/32/16/16. output_padding=0 gives the
  (n - 1) * stride + kernel sizes of the authors' PyTorch layers (Keras would pad to n * stride).

  image_block > 1 computes the last convolution (16 -> 1 channel) on image_block x image_block pixel
  blocks (SpaceToDepthConv2D, see lenet5_decoder_blocked); 1 keeps keras Conv2D."""
  if tuple(image_shape[:2]) != (28, 28):
    raise ValueError(f"lenet5_decoder makes 28x28 images, not {image_shape}; use conv_decoder")
  z = inputs = keras.Input((latent_dim,), name="latent")
  x = layers.Dense(50 * 4 * 4, activation="relu", name="fc")(z)
  x = layers.Reshape((4, 4, 50))(x)
  x = layers.Conv2DTranspose(32, 2, strides=4, output_padding=0, activation="relu", name="deconv1")(x)
  x = layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
  x = layers.Conv2DTranspose(16, 2, strides=3, output_padding=0, activation="relu", name="deconv2")(x)
  x = layers.Conv2D(16, 4, activation="relu", name="conv2")(x)
  if image_block > 1:
    image = SpaceToDepthConv2D(image_shape[-1], 5, block=image_block, activation="sigmoid", name="image")
  else:
    image = layers.Conv2D(image_shape[-1], 5, activation="sigmoid", name="image")
  outputs = image(x)
  return keras.Model(inputs, outputs, name="lenet5_decoder")


def lenet5_decoder_blocked(latent_dim=500, image_shape=(28, 28, 1)):
  """lenet5_decoder with its image layer on 2x2 pixel blocks: the same weights and, up to the order of
  float sums, the same outputs, in 11% less CPU time per float32 epoch (8% under mixed_bfloat16;
  benchmarks/decoder.json). Not the default because the numbers are not bit-identical: on the pinned
  digits run (tests/test_lad.py) the decoder's loss moves by 0.3-0.5% and three LAD rates by one
  example in 100: what a different order of float sums does over 25 epochs of training."""
  return lenet5_decoder(latent_dim, image_shape, image_block=2)


def _vgg_decoder(latent_dim, image_shape, base, blocks, name):
  """Linear -> base map, then per block: transposed conv (x2) & BN, then `repeat` conv & BN & ReLU.

  Tables XIII and XV print stride 1 for the transposed convolutions, which could not grow a 2x2 (4x4)
  map to 32x32 (128x128); stride 2 does, with exactly the listed number of upsamplings.
  """
  z = inputs = keras.Input((latent_dim,), name="latent")
  x = layers.Dense(base[0] * base[1] * base[2], name="fc")(z)
  x = layers.Reshape(base)(x)
  for i, (filters, repeat, upsample) in enumerate(blocks):
    if upsample:
      x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"deconv{i}")(x)
      x = layers.BatchNormalization()(x)
    for j in range(repeat):
      x = layers.Conv2D(filters, 3, padding="same", name=f"conv{i}_{j}")(x)
      x = layers.BatchNormalization()(x)
      x = layers.ReLU()(x)
  outputs = layers.Conv2D(image_shape[-1], 1, activation="sigmoid", name="image")(x)
  model = keras.Model(inputs, outputs, name=name)
  if tuple(model.output_shape[1:]) != tuple(image_shape):
    raise ValueError(f"{name} makes {model.output_shape[1:]} images, not {image_shape}; use conv_decoder")
  return model


def svhnnet_decoder(latent_dim=4096, image_shape=(32, 32, 3)):
  """Table XIII: 512x2x2, then (conv, deconv) pairs up to 32x32, 1x1 conv to RGB."""
  blocks = [(512, 1, False), (512, 1, True), (256, 1, True), (128, 1, True), (64, 1, True)]
  return _vgg_decoder(latent_dim, image_shape, (2, 2, 512), blocks, "svhnnet_decoder")


def svhnnet_decoder_light(latent_dim=4096, image_shape=(32, 32, 3)):
  """Table XIII's layout at half the width (256x2x2 base, 256/256/128/64/32 channels): about a
  quarter of the multiply-adds, 3x faster to train on CPUs (benchmarks/svhn_speed.json), but 2.4x the
  paper's decoder's L1 error on digits in 32x32x3 (benchmarks/svhn_decoders.json). Not the paper's:
  `svhnnet_decoder` stays the default."""
  blocks = [(256, 1, False), (256, 1, True), (128, 1, True), (64, 1, True), (32, 1, True)]
  return _vgg_decoder(latent_dim, image_shape, (2, 2, 256), blocks, "svhnnet_decoder_light")


def celebanet_decoder(latent_dim=4096, image_shape=(128, 128, 3)):
  """Table XV: 512x4x4, five (deconv, 2-3 convs) blocks up to 128x128, 1x1 conv to RGB."""
  blocks = [(512, 3, True), (512, 3, True), (256, 3, True), (128, 2, True), (64, 2, True)]
  return _vgg_decoder(latent_dim, image_shape, (4, 4, 512), blocks, "celebanet_decoder")


def conv_decoder(latent_dim, image_shape, width=64):
  """A decoder for any classifier (e.g. a user's): dense to a quarter-size map, two x2 transposed
  convolutions, a conv to the image. Needs H and W divisible by 4."""
  height, width_px, channels = image_shape
  if height % 4 or width_px % 4:
    raise ValueError(f"conv_decoder needs image sides divisible by 4, got {image_shape}")
  z = inputs = keras.Input((latent_dim,), name="latent")
  x = layers.Dense((height // 4) * (width_px // 4) * width, activation="relu", name="fc")(z)
  x = layers.Reshape((height // 4, width_px // 4, width))(x)
  x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", activation="relu", name="deconv1")(x)
  x = layers.Conv2DTranspose(width // 2, 4, strides=2, padding="same", activation="relu", name="deconv2")(x)
  outputs = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="image")(x)
  return keras.Model(inputs, outputs, name="conv_decoder")
