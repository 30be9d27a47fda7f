"""One Keras model for every robust-training method: a classifier and a per-example loss."""
import keras
import tensorflow as tf

from lad_tf.robust.losses import images_of


class RobustTrainer(keras.Model):
  """Wraps a classifier; `fit` on (x, y) minimises mean(loss_fn(classifier, x, y, training=True)).

  x is an image batch or a dict with "image" and the loss's per-example extras. Metric: the loss
  (robust accuracy is the guard's job, on held-out images). The classifier alone is the trained
  model: `call` is the classifier on the images.
  """

  def __init__(self, classifier, loss_fn, **kwargs):
    super().__init__(**kwargs)
    self.classifier, self.loss_fn = classifier, loss_fn
    self.loss_tracker = keras.metrics.Mean(name="loss")

  def call(self, x, training=False):
    return self.classifier(images_of(x), training=training)

  @property
  def metrics(self):
    return [self.loss_tracker]

  def train_step(self, data):
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    y = tf.reshape(y, [-1])
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(self.loss_fn(self.classifier, x, y, training=True))
      scaled = self.optimizer.scale_loss(loss)
    variables = self.classifier.trainable_variables
    self.optimizer.apply(tape.gradient(scaled, variables), variables)
    self.loss_tracker.update_state(loss)
    return {"loss": self.loss_tracker.result()}

  def test_step(self, data):
    x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    self.loss_tracker.update_state(tf.reduce_mean(self.loss_fn(self.classifier, x, tf.reshape(y, [-1]),
                                                               training=False)))
    return {"loss": self.loss_tracker.result()}
