"""A class-conditional AC-WGAN-GP: the generative model behind the GA attack (lad_tf.attacks.ga).

Song et al. (2018, the paper's ref [17]) train an AC-GAN with the Wasserstein loss and gradient
penalty: a generator G(z, y) from noise z and a class label y to an image, and a critic with two heads,
the Wasserstein score and an auxiliary classifier over the classes. Losses, per batch:

  critic:    mean D(G(z, y)) - mean D(x) + gp_weight * mean((|grad D(x_hat)|_2 - 1)^2)
             + aux_weight * CE(aux(x), y)                       (x_hat: random mix of x and G(z, y))
  generator: -mean D(G(z, y)) + aux_weight * CE(aux(G(z, y)), y)

The auxiliary classifier learns from real images only (as in Song et al.'s code), so it stays an
honest judge of the class of a generated image; `critic_steps` critic updates precede each generator
update (5, with Adam lr 2e-4, beta1 0, beta2 0.9 in the original WGAN-GP and Song et al.).

`build_generator` / `build_critic` make small DCGAN-style networks for any H x W x C image with H, W
divisible by 4 (28x28x1 by default, 32x32x3 likewise); images are float32 in [0, 1] (sigmoid output).
`ACWGANGP` is the trainer (a keras.Model whose train_step does one generator update, keras-io style),
so a `fit` through lad_tf.runtime.execution.fit_resumable (lad_tf.run.acgan) resumes after a kill. `ACGAN` holds the two trained
networks for the attack, and saves / loads them.
"""
import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from lad_tf.errors import ArtifactNotFoundError

GENERATOR_FILE = "generator.keras"
CRITIC_FILE = "critic.keras"
INFO_FILE = "acgan.json"


def _check_shape(image_shape):
  height, width, channels = (int(v) for v in image_shape)
  if height % 4 or width % 4 or channels < 1:
    raise ValueError(f"the AC-GAN networks need H and W divisible by 4, got image shape {tuple(image_shape)}")
  return height, width, channels


def build_generator(image_shape=(28, 28, 1), num_classes=10, noise_dim=64, width=64):
  """G: [noise (batch, noise_dim) float32, labels (batch,) int] -> images (batch, H, W, C) in [0, 1].

  The label enters as a one-hot vector concatenated with the noise; a dense layer makes a
  (H/4, W/4, 2*width) map, two stride-2 transposed convolutions (batch norm, ReLU) upsample it, and a
  3x3 convolution with a sigmoid gives the image.
  """
  height, width_px, channels = _check_shape(image_shape)
  noise = keras.Input((noise_dim,), name="noise")
  labels = keras.Input((), dtype="int32", name="labels")
  onehot = layers.CategoryEncoding(num_classes, output_mode="one_hot", name="onehot")(labels)
  x = layers.Concatenate(name="noise_and_label")([noise, onehot])
  x = layers.Dense((height // 4) * (width_px // 4) * 2 * width, use_bias=False, name="fc")(x)
  x = layers.BatchNormalization(momentum=0.9, name="fc_bn")(x)
  x = layers.ReLU()(x)
  x = layers.Reshape((height // 4, width_px // 4, 2 * width))(x)
  for i, filters in enumerate((width, width // 2)):
    x = layers.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=False, name=f"up{i + 1}")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"up{i + 1}_bn")(x)
    x = layers.ReLU()(x)
  images = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="image")(x)
  return keras.Model([noise, labels], images, name="acgan_generator")


def build_critic(image_shape=(28, 28, 1), num_classes=10, width=64):
  """Critic: images -> [Wasserstein score (batch, 1), class logits (batch, num_classes)].

  Two stride-2 convolutions with leaky ReLUs and no batch norm (the gradient penalty is per example),
  a shared dense layer, then the two heads.
  """
  _check_shape(image_shape)
  images = keras.Input(tuple(image_shape), name="images")
  x = images
  for i, filters in enumerate((width, 2 * width)):
    x = layers.Conv2D(filters, 4, strides=2, padding="same", name=f"conv{i + 1}")(x)
    x = layers.LeakyReLU(0.2)(x)
  x = layers.Flatten()(x)
  x = layers.Dense(4 * width, name="features")(x)
  x = layers.LeakyReLU(0.2)(x)
  score = layers.Dense(1, name="score")(x)
  logits = layers.Dense(num_classes, name="aux_logits")(x)
  return keras.Model(images, [score, logits], name="acgan_critic")


@dataclasses.dataclass
class ACGAN:
  """The trained pair: `generator([z, labels])` and `critic(images) -> [score, aux logits]`."""
  generator: keras.Model
  critic: keras.Model

  @property
  def noise_dim(self):
    return int(self.generator.inputs[0].shape[-1])

  @property
  def num_classes(self):
    return int(self.critic.outputs[1].shape[-1])

  @property
  def image_shape(self):
    return tuple(int(v) for v in self.generator.output_shape[1:])

  def aux_fn(self, images):
    """The auxiliary classifier: images -> class logits (a `model_fn` in the attacks' sense)."""
    return self.critic(images, training=False)[1]

  def sample(self, labels, seed=0, noise=None, batch_size=512):
    """Images G(z, labels) as float32 numpy, z ~ N(0, I) drawn with `seed` (or the given `noise`)."""
    labels = np.asarray(labels, np.int32)
    if noise is None:
      noise = np.random.default_rng(seed).standard_normal((len(labels), self.noise_dim)).astype(np.float32)
    out = [self.generator([tf.constant(noise[i:i + batch_size]), tf.constant(labels[i:i + batch_size])],
                          training=False).numpy() for i in range(0, len(labels), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.float32)

  def save(self, directory, info=None):
    os.makedirs(directory, exist_ok=True)
    self.generator.save(os.path.join(directory, GENERATOR_FILE))
    self.critic.save(os.path.join(directory, CRITIC_FILE))
    meta = {"noise_dim": self.noise_dim, "num_classes": self.num_classes,
            "image_shape": list(self.image_shape), **(info or {})}
    with open(os.path.join(directory, INFO_FILE), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True)

  @staticmethod
  def files(directory):
    """The generator and critic files of DIR/acgan/ (or of DIR itself); raises when one is missing."""
    if not os.path.exists(os.path.join(directory, GENERATOR_FILE)) and os.path.isdir(
        os.path.join(directory, "acgan")):
      directory = os.path.join(directory, "acgan")
    paths = [os.path.join(directory, name) for name in (GENERATOR_FILE, CRITIC_FILE)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise ArtifactNotFoundError(f"no trained AC-GAN in {directory} (missing {', '.join(missing)}); train "
                                  f"one with `python -m pipelines.train_acgan --dataset=NAME --workdir=DIR`")
    return paths

  @classmethod
  def load(cls, directory):
    """Loads DIR/acgan/ (or a work directory DIR holding acgan/)."""
    return cls(*(keras.models.load_model(p, compile=False) for p in cls.files(directory)))


def gradient_penalty(critic, real, fake, alpha):
  """mean((|d score / d x_hat|_2 - 1)^2) at x_hat = real + alpha * (fake - real)."""
  mixed = real + alpha * (fake - real)
  with tf.GradientTape() as tape:
    tape.watch(mixed)
    score = critic(mixed, training=True)[0]
  grads = tape.gradient(score, mixed)
  norms = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=[1, 2, 3]) + 1e-12)
  return tf.reduce_mean(tf.square(norms - 1.0))


class ACWGANGP(keras.Model):
  """Trains an ACGAN with `fit` on a dataset of (images, labels) batches.

  Each train_step runs `critic_steps` critic updates on the batch (fresh noise each time) and one
  generator update, with the batch's labels as the generator's classes. Metrics per epoch: d_loss,
  g_loss, w_distance (mean D(real) - mean D(fake)), gp, aux_real_accuracy (the auxiliary classifier on
  real images) and aux_fake_accuracy (on generated images: how class-conditional G is).
  """

  def __init__(self, generator, critic, critic_steps=5, gp_weight=10.0, aux_weight=1.0, seed=0, **kwargs):
    super().__init__(**kwargs)
    if critic_steps < 1:
      raise ValueError(f"critic_steps must be >= 1, got {critic_steps}")
    self.generator, self.critic = generator, critic
    self.critic_steps, self.gp_weight, self.aux_weight = int(critic_steps), float(gp_weight), float(aux_weight)
    self.noise_dim = int(generator.inputs[0].shape[-1])
    self.seed_generator = keras.random.SeedGenerator(seed)
    self.cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    names = ("d_loss", "g_loss", "w_distance", "gp")
    self.trackers = {n: keras.metrics.Mean(name=n) for n in names}
    self.aux_real_accuracy = keras.metrics.SparseCategoricalAccuracy(name="aux_real_accuracy")
    self.aux_fake_accuracy = keras.metrics.SparseCategoricalAccuracy(name="aux_fake_accuracy")

  @property
  def acgan(self):
    return ACGAN(self.generator, self.critic)

  def compile(self, d_optimizer=None, g_optimizer=None, learning_rate=2e-4, beta_1=0.0, beta_2=0.9):
    """Adam for both networks (WGAN-GP's lr 2e-4, betas 0 / 0.9) unless optimizers are given.

    The optimizers are built here, so a per-epoch backup restores their state along with the weights.
    """
    super().compile()
    self.optimizer.build([])  # the unused default optimizer: built empty, so fit never builds it anew
    adam = lambda: keras.optimizers.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2)
    self.d_optimizer = d_optimizer or adam()
    self.g_optimizer = g_optimizer or adam()
    self.d_optimizer.build(self.critic.trainable_variables)
    self.g_optimizer.build(self.generator.trainable_variables)

  def call(self, inputs, training=False):
    return self.generator(inputs, training=training)

  def build_all(self):
    """Builds the wrapper (BackupAndRestore needs a built model before fit)."""
    self([tf.zeros((1, self.noise_dim)), tf.zeros((1,), tf.int32)])

  @property
  def metrics(self):
    return [*self.trackers.values(), self.aux_real_accuracy, self.aux_fake_accuracy]

  def _noise(self, batch):
    return keras.random.normal((batch, self.noise_dim), seed=self.seed_generator)

  def train_step(self, data):
    real, labels = data[0], tf.cast(data[1], tf.int32)
    batch = tf.shape(real)[0]
    for _ in range(self.critic_steps):
      alpha = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator)
      fake = self.generator([self._noise(batch), labels], training=True)
      with tf.GradientTape() as tape:
        real_score, real_logits = self.critic(real, training=True)
        fake_score, _ = self.critic(fake, training=True)
        w_distance = tf.reduce_mean(real_score) - tf.reduce_mean(fake_score)
        gp = gradient_penalty(self.critic, real, fake, alpha)
        d_loss = -w_distance + self.gp_weight * gp + self.aux_weight * self.cross_entropy(labels, real_logits)
      grads = tape.gradient(d_loss, self.critic.trainable_variables)
      self.d_optimizer.apply(grads, self.critic.trainable_variables)
    with tf.GradientTape() as tape:
      fake = self.generator([self._noise(batch), labels], training=True)
      fake_score, fake_logits = self.critic(fake, training=True)
      g_loss = -tf.reduce_mean(fake_score) + self.aux_weight * self.cross_entropy(labels, fake_logits)
    grads = tape.gradient(g_loss, self.generator.trainable_variables)
    self.g_optimizer.apply(grads, self.generator.trainable_variables)
    for name, value in (("d_loss", d_loss), ("g_loss", g_loss), ("w_distance", w_distance), ("gp", gp)):
      self.trackers[name].update_state(value)
    self.aux_real_accuracy.update_state(labels, real_logits)
    self.aux_fake_accuracy.update_state(labels, fake_logits)
    return {m.name: m.result() for m in self.metrics}


@dataclasses.dataclass
class ACGANConfig:
  """Training settings; the defaults suit 28x28 grey images on CPU (a few minutes for Fashion-MNIST
  per 10 epochs at width 64). Song et al.: z 128-d, 5 critic steps, Adam 2e-4 (0, 0.9), gp 10."""
  epochs: int = 20
  batch_size: int = 64
  noise_dim: int = 64
  width: int = 32
  critic_steps: int = 5
  gp_weight: float = 10.0
  aux_weight: float = 1.0
  learning_rate: float = 2e-4
  beta_1: float = 0.0
  beta_2: float = 0.9
  seed: int = 0
  verbose: int = 2


def build_trainer(image_shape, num_classes, config=ACGANConfig()):
  """A compiled, built ACWGANGP with fresh networks sized by `config`."""
  keras.utils.set_random_seed(config.seed)
  generator = build_generator(image_shape, num_classes, config.noise_dim, config.width)
  critic = build_critic(image_shape, num_classes, config.width)
  trainer = ACWGANGP(generator, critic, critic_steps=config.critic_steps, gp_weight=config.gp_weight,
                     aux_weight=config.aux_weight, seed=config.seed)
  trainer.compile(learning_rate=config.learning_rate, beta_1=config.beta_1, beta_2=config.beta_2)
  trainer.build_all()
  return trainer
