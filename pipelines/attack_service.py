"""Attack a served model the way an outsider would: through its Predict API, queries only.

`python -m pipelines.attack_service --server=HOST:PORT --model_name=NAME --attack=square|hopskipjump
    --queries=10000 --images=PATH [--labels=PATH.npy] [--eps=0.1] [--rest] [--client_id=ID]`

Square reads the returned probabilities, HopSkipJump only the returned class. Both are the
library's own attacks (lad_tf.attacks.query) talking to the endpoint through a `QueryModel`, so
the figures are comparable with the in-process ones. Prints and writes (JSON + plot) the robust
accuracy at each query budget (100, 1,000, 10,000 up to --queries) and the queries each successful
attack used. A server that refuses the attacker (query detection, PERMISSION_DENIED / 403) ends
the run; the report then says after how many queries.
"""
import json
import os

import numpy as np
from absl import app
from absl import flags

from pipelines import common

BUDGETS = (100, 1000, 10000)

FLAGS = flags.FLAGS


def _define_flags():
  """Defined when run as a command only: the benchmark imports this module beside its own flags."""
  flags.DEFINE_string("server", "localhost:8500", "HOST:PORT of the gRPC (or, with --rest, REST) endpoint.")
  flags.DEFINE_string("model_name", "lad", "Served model name.")
  flags.DEFINE_enum("attack", "square", ["square", "hopskipjump"],
                    "square: score-based (probabilities); hopskipjump: decision-based (labels only).")
  flags.DEFINE_integer("queries", 10000, "Query budget per image (model queries, each image one).")
  flags.DEFINE_string("images", None, "Images to attack: a PNG/NPY file or a directory of them, or a "
                      "dataset name (its test split, e.g. fashion_mnist).")
  flags.DEFINE_string("labels", None, "NPY of true classes for --images files (default: the server's "
                      "own predictions on the clean images).")
  flags.DEFINE_integer("n", 20, "Images taken from a dataset named by --images.")
  flags.DEFINE_float("eps", 0.1, "L-inf radius of the attack, in [0, 1] pixel units.")
  flags.DEFINE_bool("rest", False, "Query the REST API (JSON) instead of gRPC.")
  flags.DEFINE_string("client_id", None, "Name sent as x-client-id (what a gateway would set).")
  flags.DEFINE_integer("batch_size", 64, "Images per request at most.")
  flags.DEFINE_integer("seed", 0, "Seed of the attack's random draws.")
  flags.DEFINE_string("output", None, "JSON report path (a .png plot beside it). Default: "
                      "runs/attack_service/ATTACK.json.")


def endpoint_fn(client, output, batch_size):
  """numpy images -> the endpoint's probabilities or classes, in requests of <= batch_size;
  a PERMISSION_DENIED answer becomes QueryRefused."""
  from lad_tf.attacks.query import QueryRefused
  from serving import client as client_lib

  key = "probabilities" if output == "probabilities" else "classes"

  def query(images):
    parts = []
    for start in range(0, len(images), batch_size):
      try:
        parts.append(client.predict(images[start:start + batch_size])[key])
      except client_lib.RequestError as e:
        if e.code == "PERMISSION_DENIED":
          raise QueryRefused(e.message) from None
        raise
    return np.concatenate(parts)

  return query


def attack_through(query_fn, num_classes, attack, x, y, eps, queries, seed=0, budgets=BUDGETS):
  """Run `attack` on (x, y) through query_fn; returns the report dict (refusals included)."""
  import tensorflow as tf
  from lad_tf.attacks import query as query_lib

  output = query_lib.ATTACKS[attack][1]
  model = query_lib.QueryModel(query_fn, num_classes, output)
  report = {"attack": attack, "answers_used": output, "eps": float(eps), "images": int(len(x)),
            "query_budget": int(queries), "refused": False}
  try:
    clean = model(x).numpy().argmax(axis=-1)  # What an attacker looks at first.
    _, broken, used = query_lib.run_query_attack(attack, model, x, y, eps, queries, seed=seed)
  except (query_lib.QueryRefused, tf.errors.OpError):
    if model.refused_after is None:
      raise
    report.update(refused=True, queries_before_refusal=int(model.refused_after))
    return report
  report.update(query_lib.budget_curve(clean == y, broken, used,
                                       [b for b in budgets if b < queries] + [queries]))
  report["queries_sent"] = int(model.queries)
  return report


def plot(report, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  curve = report["robust_accuracy"]
  budgets = sorted(curve)
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  ax.plot(budgets, [curve[b] for b in budgets], marker="o")
  ax.set_xscale("log")
  ax.set_ylim(0, 1)
  ax.set_xlabel("queries per image")
  ax.set_ylabel("robust accuracy")
  ax.set_title(f"{report['attack']} through {report.get('server', 'the endpoint')}, eps {report['eps']:g}")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def load_inputs(images, labels, n):
  """(x, y or None) from files or a dataset name; raises UsageError naming the problem."""
  from lad_tf.data import datasets
  if images in datasets.REGISTRY:
    data = datasets.load(images)
    return data.test.x[:n].astype(np.float32), data.test.y[:n].astype(np.int64)
  from serving import client as client_lib
  try:
    x, _ = client_lib.load_images(images)
  except (OSError, ValueError) as e:
    raise app.UsageError(f"--images: {e}") from None
  if labels is None:
    return x, None
  y = np.load(labels, allow_pickle=False).astype(np.int64).reshape(-1)
  if len(y) != len(x):
    raise app.UsageError(f"--labels holds {len(y)} classes for {len(x)} images; give one per image")
  return x, y


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.images:
    raise app.UsageError("give --images=PATH (PNG/NPY file or folder) or a dataset name")
  if FLAGS.queries < 2 or not 0 < FLAGS.eps <= 1:
    raise app.UsageError(f"--queries must be >= 2 and --eps in (0, 1], got {FLAGS.queries}, {FLAGS.eps}")
  from serving import client as client_lib
  x, y = load_inputs(FLAGS.images, FLAGS.labels, FLAGS.n)
  client = client_lib.PredictClient(FLAGS.server, model_name=FLAGS.model_name, rest=FLAGS.rest,
                                    client_id=FLAGS.client_id)
  try:
    try:
      probabilities = client.predict(x[:1])["probabilities"]
    except client_lib.RequestError as e:
      from lad_tf.errors import LadError
      raise LadError(f"{FLAGS.server} refused a first query: {e}; check --server and --model_name") from None
    labels_from = "given"
    if y is None:
      y = np.argmax(endpoint_fn(client, "probabilities", FLAGS.batch_size)(x), axis=-1)
      labels_from = "the endpoint's own predictions on the clean images"
    output = "probabilities" if FLAGS.attack == "square" else "labels"
    report = attack_through(endpoint_fn(client, output, FLAGS.batch_size), probabilities.shape[-1],
                            FLAGS.attack, x, y, FLAGS.eps, FLAGS.queries, FLAGS.seed)
  finally:
    client.close()
  report.update(server=FLAGS.server, model_name=FLAGS.model_name, protocol="rest" if FLAGS.rest else "grpc",
                labels=labels_from)
  path = FLAGS.output or os.path.join("runs", "attack_service", f"{FLAGS.attack}.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(report, f, indent=2, sort_keys=True)
  if not report["refused"]:
    plot(report, os.path.splitext(path)[0] + ".png")
  print(json.dumps({k: v for k, v in report.items() if k != "queries_per_success"}, indent=2, sort_keys=True))
  print(f"report written to {path}")


HELP_GROUPS = (
    ("endpoint", ("server", "rest", "model_name", "client_id", "batch_size")),
    ("attack", ("attack", "queries", "eps", "seed")),
    ("images", ("images", "labels", "n")),
    ("report", ("output", "verbose")),
)

if __name__ == "__main__":
  _define_flags()
  common.run(main, HELP_GROUPS)
