"""The paper's classifiers (Appendix Tables XII, XIV; LeNet-5) and the "black CNN" attackers use.

Every classifier is a Keras functional model returning logits, with its latent layer named `latent`.
Following the authors' code, the latent is the output of that fully connected layer *before* its ReLU.
"""
import keras
from keras import layers


def _two_conv_net(name, input_shape, num_classes, filters, latent_units, padding):
  """conv 5x5, pool, conv 5x5, pool, fc `latent` (before its ReLU), logits: LeNet-5's and Madry's shape."""
  x = inputs = keras.Input(input_shape, name="images")
  for i, width in enumerate(filters, start=1):
    x = layers.Conv2D(width, 5, padding=padding, activation="relu", name=f"conv{i}")(x)
    x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
  x = layers.Flatten(name="flatten")(x)
  x = layers.Dense(latent_units, name="latent")(x)
  x = layers.ReLU(name="latent_relu")(x)
  outputs = layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, outputs, name=name)


def lenet5(input_shape=(28, 28, 1), num_classes=10):
  """LeNet-5 as in the paper: conv 20@5x5, pool, conv 50@5x5, pool, fc 500 (latent), fc classes."""
  return _two_conv_net("lenet5", input_shape, num_classes, (20, 50), 500, "valid")


def madry_cnn(input_shape=(28, 28, 1), num_classes=10):
  """The CNN MNIST robustness results are reported on (Madry et al. 2018): conv 32@5x5, pool,
  conv 64@5x5, pool, fc 1024 (latent), logits. Convolutions keep the size ("same"), as in their code."""
  return _two_conv_net("madry_cnn", input_shape, num_classes, (32, 64), 1024, "same")


def svhnnet(input_shape=(32, 32, 3), num_classes=10):
  """svhnNet (Table XII). The table's flatten is 512x4x4, which a 32x32 input reaches after three
  pools, so the fourth conv block does not pool. Latent: the 4096-unit fc output."""
  x = inputs = keras.Input(input_shape, name="images")
  for i, (filters, pool) in enumerate([(64, True), (128, True), (256, True), (512, False), (512, False)]):
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
    if pool:
      x = layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
  x = layers.Flatten(name="flatten")(x)
  x = layers.Dense(4096, name="latent")(x)
  x = layers.ReLU(name="latent_relu")(x)
  x = layers.Dropout(0.5, name="dropout")(x)
  x = layers.Dense(2048, activation="relu", name="fc2")(x)
  x = layers.Dense(512, activation="relu", name="fc3")(x)
  outputs = layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, outputs, name="svhnnet")


_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def celebanet(input_shape=(128, 128, 3), num_classes=2):
  """CelebANet (Table XIV): VGG11's conv/pool layers, fc 4096 (latent), fc 2048, logits.

  The paper ends in one logit; we use `num_classes` (2) logits so every module speaks softmax."""
  x = inputs = keras.Input(input_shape, name="images")
  conv = 0
  for item in _VGG11:
    if item == "M":
      x = layers.MaxPooling2D(2)(x)
    else:
      conv += 1
      x = layers.Conv2D(item, 3, padding="same", activation="relu", name=f"conv{conv}")(x)
  x = layers.Flatten(name="flatten")(x)
  x = layers.Dense(4096, name="latent")(x)
  x = layers.ReLU(name="latent_relu")(x)
  x = layers.Dropout(0.5)(x)
  x = layers.Dense(2048, activation="relu", name="fc2")(x)
  x = layers.Dropout(0.5)(x)
  outputs = layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, outputs, name="celebanet")


def black_cnn(input_shape, num_classes):
  """The paper's "black CNN": a classifier built differently from the shared one (3x3 convs, batch
  norm, global pooling, 128-unit head), trained independently, standing for the attacker's model."""
  x = inputs = keras.Input(input_shape, name="images")
  for i, filters in enumerate((32, 64, 128)):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i + 1}a")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}b")(x)
    if min(x.shape[1], x.shape[2]) >= 4:
      x = layers.MaxPooling2D(2)(x)
  x = layers.GlobalAveragePooling2D()(x)
  x = layers.Dense(128, name="latent")(x)
  x = layers.ReLU()(x)
  x = layers.Dropout(0.3)(x)
  outputs = layers.Dense(num_classes, name="logits")(x)
  return keras.Model(inputs, outputs, name="black_cnn")
