"""The AC-GAN stage: trains GA's AC-WGAN-GP (lad_tf.models.acgan) resumably in a work directory, judges
its samples and draws them. The network and its train_step live in the model zoo; this is the run."""
import dataclasses
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from lad_tf.data import datasets
from lad_tf.evaluation import figures
from lad_tf.models.acgan import CRITIC_FILE, GENERATOR_FILE, INFO_FILE, ACGANConfig, build_trainer
from lad_tf.run.workdir import WorkDir
from lad_tf.runtime import training
from lad_tf.runtime.execution import fit_resumable
from lad_tf.runtime.files import read_json

log = logging.getLogger("lad_tf")


def class_conditional_accuracy(acgan, classifier, n_per_class=50, seed=0):
  """Share of samples G(z, c) that `classifier` (logits) labels c, over n_per_class samples per class.

  Returns (overall accuracy, per-class accuracies as a list).
  """
  labels = np.repeat(np.arange(acgan.num_classes), n_per_class).astype(np.int32)
  images = acgan.sample(labels, seed=seed)
  pred = np.argmax(classifier.predict(images, batch_size=512, verbose=0), axis=-1)
  per_class = [float(np.mean(pred[labels == c] == c)) for c in range(acgan.num_classes)]
  return float(np.mean(pred == labels)), per_class


class _EpochLog(keras.callbacks.Callback):
  def __init__(self, say, epochs):
    super().__init__()
    self.say, self.epochs, self.start = say, epochs, None

  def on_epoch_begin(self, epoch, logs=None):
    self.start = time.time()

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    seconds = time.time() - (self.start or time.time())
    self.say(f"acgan epoch {epoch + 1}/{self.epochs} ({seconds:.0f} s): " +
             ", ".join(f"{k} {float(v):.4f}" for k, v in logs.items()))


def train_acgan(train, image_shape, num_classes, config=ACGANConfig(), state_dir=None, callbacks=(),
                progress=None):
  """Trains an AC-WGAN-GP on a Split (images in [0, 1], int labels); returns (ACGAN, history dict).

  state_dir keeps a backup after every epoch (weights, both optimizers' states, the epoch counter), so
  calling again with the same arguments after a kill resumes at the last finished epoch. `progress`
  (a callable taking one string) gets one line per epoch.
  """
  trainer = build_trainer(image_shape, num_classes, config)
  if train.streamed:  # decoded on the fly (lad_tf.data.sources.images), never held whole
    ds = train.x.pairs(np.asarray(train.y, np.int32), shuffle=True, seed=config.seed)
  else:
    ds = (tf.data.Dataset.from_tensor_slices((np.asarray(train.x, np.float32), np.asarray(train.y, np.int32)))
          .cache().shuffle(min(len(train.y), 20000), seed=config.seed, reshuffle_each_iteration=True))
  ds = ds.batch(config.batch_size, drop_remainder=len(train.y) > config.batch_size).prefetch(tf.data.AUTOTUNE)
  extra = [*callbacks] + ([_EpochLog(progress, config.epochs)] if progress else [])
  if state_dir is None:
    history = trainer.fit(ds, epochs=config.epochs, verbose=config.verbose, callbacks=extra)
  else:
    history = fit_resumable(trainer, ds, config.epochs, state_dir, verbose=config.verbose, callbacks=extra)
  return trainer.acgan, {k: [float(v) for v in vs] for k, vs in history.history.items()}


def sample_figure(path, acgan, class_names, per_class=10, seed=0):
  """One row of samples G(z, c) per class c, captioned with the class name."""
  labels = np.repeat(np.arange(acgan.num_classes), per_class)
  captions = [str(class_names[c])[:12] for c in labels]
  return figures.image_grid(path, acgan.sample(labels, seed=seed), captions, cols=per_class,
                            title="AC-WGAN-GP samples, one row per class")


def train_stage(workdir, dataset, config=ACGANConfig(), data_dir=None, samples_per_class=10, force=False,
                callbacks=(), progress=None):
  """The `acgan` stage of a work directory: trains (or resumes) and saves DIR/acgan/.

  Writes DIR/acgan/{generator,critic}.keras and acgan.json (settings, history, aux_test_accuracy: the
  auxiliary classifier on the test split, aux_sample_accuracy / classifier_sample_accuracy: the share
  of 100 samples per class that the auxiliary classifier / DIR/classifier/model.keras (when present)
  labels as their class), and DIR/figures/acgan_samples.png. The stage is keyed on the fingerprint of
  its settings (lad_tf.run.workdir): a complete one is skipped unless `force` or a setting changed; a
  killed one resumes from its per-epoch backup when the settings are unchanged.
  Returns acgan.json's content plus "path" (the stage folder).
  """
  say = progress or log.info
  work = WorkDir(workdir)
  spec = datasets.get_spec(dataset)
  settings = {"dataset": dataset, **dataclasses.asdict(config)}
  settings.pop("verbose")

  def run(out):
    data = datasets.load(spec, data_dir=data_dir)
    say(f"acgan: training an AC-WGAN-GP on {len(data.train)} {dataset} images for {config.epochs} epochs "
        f"(z {config.noise_dim}-d, width {config.width}, {config.critic_steps} critic steps)")
    model, history = train_acgan(data.train, spec.image_shape, spec.num_classes, config, state_dir=out,
                                 callbacks=callbacks, progress=say)
    aux_pred = np.argmax(training.predict(model.critic, data.test.x)[1], axis=-1)
    labels = np.repeat(np.arange(spec.num_classes), 100).astype(np.int32)
    samples = model.sample(labels, seed=config.seed + 1)
    info = {**settings, "history": history, "aux_test_accuracy": float(np.mean(aux_pred == data.test.y)),
            "aux_sample_accuracy": float(np.mean(np.argmax(model.critic.predict(
                samples, batch_size=512, verbose=0)[1], axis=-1) == labels))}
    if os.path.exists(work.path("classifier", "model.keras")):
      classifier = work.model("classifier")
      pred = np.argmax(classifier.predict(samples, batch_size=512, verbose=0), axis=-1)
      info["classifier_sample_accuracy"] = float(np.mean(pred == labels))
    model.save(out, info)
    sample_figure(work.path("figures", "acgan_samples.png"), model, spec.class_names, samples_per_class,
                  seed=config.seed)
    shutil.rmtree(os.path.join(out, "backup"), ignore_errors=True)
    say(f"acgan: auxiliary classifier test accuracy {info['aux_test_accuracy']:.4f}, samples of the "
        f"right class (aux) {info['aux_sample_accuracy']:.4f}")

  path = work.run_stage("acgan", settings, run, force=force, outputs=(GENERATOR_FILE, CRITIC_FILE, INFO_FILE))
  info = read_json(os.path.join(path, INFO_FILE), {})
  return {**info, "path": path}
