"""A Keras callback that simulates a killed run: it raises at the end of a chosen epoch."""
import keras


class Killed(Exception):
  """Stands for the process being killed mid-training."""


class KillAfter(keras.callbacks.Callback):
  def __init__(self, epoch):
    super().__init__()
    self.kill_epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    if epoch == self.kill_epoch:
      raise Killed()
