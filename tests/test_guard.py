"""The overfitting guard's bookkeeping, with scripted checks (no training): a rollback keeps the
learning-rate schedule's step, the selection rules pick the epoch they promise and restore its weights,
and with averaged weights the checks and the selection see the averages."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lad_tf.robust import guard as guard_lib


def _guard(scripted, **kwargs):
  """A guard over a one-layer model whose kernel is set to the epoch number before each check, so the
  restored weights tell which epoch they came from."""
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
  optimizer = keras.optimizers.Adam(**kwargs.pop("adam", {}))
  optimizer.build(model.trainable_variables)
  guard = guard_lib.OverfittingGuard(np.zeros((4, 2), np.float32), np.zeros(4), 0.1, tf.Variable(1.0), **kwargs)
  rows = iter(scripted)
  guard._measure = lambda: np.array(next(rows))
  guard.watch(model, optimizer)
  return guard, model, optimizer


def _train(guard, model, epochs):
  model.layers[0].kernel.assign(np.zeros((2, 2), np.float32))
  guard.on_epoch_begin(0)
  for epoch in range(epochs):
    model.layers[0].kernel.assign(np.full((2, 2), epoch + 1, np.float32))
    guard.optimizer.iterations.assign(100 * (epoch + 1))
    guard.on_epoch_end(epoch)
  guard.on_train_end()
  return float(model.layers[0].kernel.numpy()[0, 0])


# (clean, FGSM, PGD-10) held-out accuracy at the start and after each of 4 epochs
CHECKS = [(0.90, 0.10, 0.00), (0.80, 0.55, 0.50), (0.86, 0.50, 0.45), (0.855, 0.52, 0.47), (0.70, 0.50, 0.40)]


def test_robust_selection_takes_the_best_pgd_epoch_and_balanced_the_best_within_a_point_of_clean():
  guard, model, _ = _guard(CHECKS)
  assert _train(guard, model, 4) == 1 and guard.selected_epoch == 1
  assert "best held-out PGD-10" in guard.selection_reason
  # balanced: the trained epochs within 0.01 of their best clean accuracy (0.86: epochs 2 and 3; the
  # start's 0.90 is no defence's), the more robust of them
  guard, model, _ = _guard(CHECKS, selection="balanced")
  assert _train(guard, model, 4) == 3 and guard.selected_epoch == 3
  assert "within 0.01 of the best held-out clean accuracy (0.860)" in guard.selection_reason
  assert sorted(guard._front) == [0, 1, 2, 3]  # epoch 4 is beaten by epoch 1 on both figures
  with pytest.raises(ValueError, match="unknown selection 'best'"):
    _guard(CHECKS, selection="best")


def test_a_rollback_restores_the_weights_but_not_the_schedules_step():
  # epoch 2's PGD accuracy falls 0.3 below epoch 1's: a collapse, rolled back to epoch 1
  guard, model, optimizer = _guard([(0.9, 0.1, 0.0), (0.8, 0.5, 0.5), (0.8, 0.9, 0.2)], select_best=False)
  model.layers[0].kernel.assign(np.zeros((2, 2), np.float32))
  guard.on_epoch_begin(0)
  for epoch in range(2):
    model.layers[0].kernel.assign(np.full((2, 2), epoch + 1, np.float32))
    optimizer.iterations.assign(100 * (epoch + 1))
    guard.on_epoch_end(epoch)
  assert guard.rollbacks == 1
  assert float(model.layers[0].kernel.numpy()[0, 0]) == 1.0  # epoch 1's weights
  assert int(optimizer.iterations.numpy()) == 200  # the schedule goes on from epoch 2's end


def test_with_averaged_weights_the_checks_and_the_selection_see_the_averages():
  guard, model, optimizer = _guard([(0.9, 0.1, 0.0), (0.8, 0.5, 0.5)], adam={"use_ema": True, "ema_momentum": 0.5})
  seen = []
  measure = guard._measure
  guard._measure = lambda: (seen.append(model.layers[0].kernel.numpy().copy()), measure())[1]
  averages = guard._averages()
  assert averages, "Adam(use_ema=True) keeps one average per trainable variable"
  guard.on_epoch_begin(0)
  model.layers[0].kernel.assign(np.full((2, 2), 4.0, np.float32))
  averages[0].assign(np.full((2, 2), 3.0, np.float32))
  guard.on_epoch_end(0)
  assert seen[-1][0, 0] == 3.0  # the check measured the average
  assert float(model.layers[0].kernel.numpy()[0, 0]) == 4.0  # and put the trained weights back
  guard.on_train_end()
  assert float(model.layers[0].kernel.numpy()[0, 0]) == 3.0  # training hands back the selected epoch's average
  assert guard.selection_reason.endswith("weights averaged")
