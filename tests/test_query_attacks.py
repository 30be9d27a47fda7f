"""Attacks through a query interface (lad_tf.attacks.query): Square over an endpoint is Square
in-process, query counts are budgets, and HopSkipJump breaks a model from its labels alone."""
import numpy as np
import pytest

import digits_models
from lad_tf import attacks
from lad_tf.attacks import query as query_lib


@pytest.fixture(scope="module")
def setup():
  model, data = digits_models.plain_lenet()
  x, y = digits_models.sample_images(data, 2, seed=3)
  keep = attacks.predict(model, x) == y
  return model, x[keep][:12], y[keep][:12]


def _endpoint(model, output):
  """What a server answers: softmax probabilities, or the class alone."""
  def answer(images):
    logits = np.asarray(model(images, training=False), np.float64)
    if output == "labels":
      return logits.argmax(axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
  return answer


def test_square_through_an_endpoint_is_square_in_process(setup):
  model, x, y = setup
  local = attacks.square_queries(model, x, y, 0.1, n_queries=300, seed=1)
  remote_model = query_lib.QueryModel(_endpoint(model, "probabilities"), 10)
  remote = attacks.square_queries(remote_model, x, y, 0.1, n_queries=300, seed=1)
  assert local[1].sum() >= 3  # The comparison says something: some images break.
  np.testing.assert_array_equal(local[1], remote[1])
  np.testing.assert_array_equal(local[2], remote[2])
  assert remote_model.queries == 1 + remote[2].sum()  # num_classes probe + the attack's own


def test_square_queries_are_budgets(setup):
  model, x, y = setup
  _, broken_long, queries_long = query_lib.run_query_attack("square", model, x, y, 0.1, 400, seed=2)
  _, broken_short, queries_short = query_lib.run_query_attack("square", model, x, y, 0.1, 60, seed=2)
  assert queries_long.max() <= 400 and queries_short.max() <= 60
  np.testing.assert_array_equal(broken_short, broken_long & (queries_long <= 60))
  np.testing.assert_array_equal(queries_short[broken_short], queries_long[broken_short])
  curve = query_lib.budget_curve(np.ones(len(x), bool), broken_long, queries_long, [60, 400])
  assert curve["robust_accuracy"][60] == pytest.approx(1 - broken_short.mean())


def test_budget_curve_by_hand():
  curve = query_lib.budget_curve(correct=[True, True, True, False], broken=[True, True, False, True],
                                 queries=[5, 50, 100, 1], budgets=[10, 100])
  assert curve["robust_accuracy"] == {10: 0.5, 100: 0.25}
  assert curve["queries_per_success"] == [5, 50] and curve["median_queries_per_success"] == 27.5


def test_hop_skip_jump_breaks_a_model_from_its_labels_alone(setup):
  model, x, y = setup
  x, y = x[:6], y[:6]
  labels_only = query_lib.QueryModel(_endpoint(model, "labels"), 10, output="labels")
  x_adv, broken, queries = attacks.hop_skip_jump_queries(labels_only, x, y, 0.2, n_queries=1500, seed=0)
  assert broken.mean() >= 0.5, queries
  pred = attacks.predict(model, x_adv)
  assert np.all(pred[broken] != y[broken]) and np.all(pred[~broken] == y[~broken])
  assert np.max(np.abs(x_adv - x)) <= 0.2 + 1e-6
  assert queries.max() <= 1500 and labels_only.queries >= queries.sum()


def test_the_model_card_carries_what_the_endpoint_gave_an_attacker(tmp_path):
  from pipelines import export as export_pipeline
  assert export_pipeline.build_model_card(str(tmp_path), "defended")["query_attacks"] is None
  (tmp_path / "attack_service").mkdir()
  (tmp_path / "attack_service" / "square.json").write_text(
      '{"attack": "square", "eps": 0.1, "robust_accuracy": {"100": 0.5}, "queries_per_success": [3]}')
  card = export_pipeline.build_model_card(str(tmp_path), "defended")["query_attacks"]
  assert card["through_the_endpoint"] == {"square": {"attack": "square", "eps": 0.1, "robust_accuracy": {"100": 0.5}}}
  assert "blinds each query" in card["detector_limits"]
