"""Traffic for the service_attacks benchmark: attack runs one client each, benign clients, load.

Every client names itself (x-client-id), as a gateway would, so the server's query detector keeps
one history per simulated client although all traffic comes from 127.0.0.1.
"""
import concurrent.futures

import numpy as np

class SwitchableEndpoint:
  """One query function whose client changes between runs, so a QueryModel (and the attack's
  traced graph) serves every run; `transform` lets an adaptive attacker alter each query."""

  def __init__(self, address, model_name, output, transform=None):
    from serving import client as client_lib
    self._client_lib = client_lib
    self.address, self.model_name, self.output, self.transform = address, model_name, output, transform
    self.client = None

  def use(self, client_id):
    if self.client is not None:
      self.client.close()
    self.client = self._client_lib.PredictClient(self.address, model_name=self.model_name, client_id=client_id)

  def __call__(self, images):
    from pipelines import attack_service
    if self.transform is not None:
      images = self.transform(images)
    return attack_service.endpoint_fn(self.client, self.output, 64)(images)

  def close(self):
    if self.client is not None:
      self.client.close()


def randomiser(rng, noise, max_shift=1):
  """The adaptive attacker's blinding: light uniform noise and a random shift of every query."""
  def transform(images):
    out = np.clip(images + rng.uniform(-noise, noise, images.shape), 0, 1).astype(np.float32)
    for i in range(len(out)):
      out[i] = np.roll(out[i], tuple(rng.integers(-max_shift, max_shift + 1, 2)), axis=(0, 1))
    return out
  return transform


def attack_runs(endpoint, attack, x, y, eps, budget, prefix, seed=0):
  """One attack run per image, each as its own client; returns per-run (refused, queries, broken)."""
  import tensorflow as tf
  from lad_tf.attacks import query as query_lib

  model = query_lib.QueryModel(endpoint, 10, query_lib.ATTACKS[attack][1])
  runs = []
  for i in range(len(x)):
    endpoint.use(f"{prefix}-{i}")
    model.queries, model.refused_after = 0, None
    try:
      _, broken, used = query_lib.run_query_attack(attack, model, x[i:i + 1], y[i:i + 1], eps, budget,
                                                   seed=seed + i)
      runs.append({"refused": False, "broken": bool(broken[0]), "queries": int(used[0])})
    except (query_lib.QueryRefused, tf.errors.OpError):
      if model.refused_after is None:
        raise
      runs.append({"refused": True, "queries_answered": int(model.refused_after)})
  endpoint.close()
  return runs


def benign_stream(x, client, seed=0, images_per_client=100, copies_per_client=10):
  """What benign client number `client` sends: `images_per_client` distinct images of x (its own
  random draw) and, for `copies_per_client` of them, every benign copy (retry, noise, one-pixel
  shift, JPEG), in a shuffled order."""
  from serving import testing

  rng = np.random.default_rng(seed + client)
  own = x[rng.choice(len(x), min(images_per_client, len(x)), replace=False)]
  stream = list(own)
  for i in rng.choice(len(own), min(copies_per_client, len(own)), replace=False):
    stream.extend(testing.benign_copies(own[i], rng).values())
  return [stream[k] for k in rng.permutation(len(stream))]


def attack_images(x, y, runs, seed=0):
  """(x, y, rng): the `runs` images the detection runs attack, and the generator drawn from."""
  rng = np.random.default_rng(seed + 1)
  pick = rng.choice(len(x), runs, replace=False)
  return x[pick], y[pick], rng


def benign_clients(address, model_name, x, clients, copies_per_client, images_per_client=100, seed=0,
                   threads=8):
  """Each client sends its `benign_stream`, one image per request."""
  from serving import client as client_lib

  def one(c):
    stream = benign_stream(x, c, seed, images_per_client, copies_per_client)
    refused = 0
    with client_lib.PredictClient(address, model_name=model_name, client_id=f"benign-{c}") as client:
      for image in stream:
        try:
          client.predict(image[None])
        except client_lib.RequestError:
          refused += 1
    return len(stream), refused

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    results = list(pool.map(one, range(clients)))
  return {"clients": clients, "images_per_client": images_per_client,
          "copies_per_client": copies_per_client, "requests": sum(r[0] for r in results),
          "refused_requests": sum(r[1] for r in results)}


def serve_off_and_on(models, x, workdir):
  """({"off": server, "on": server}, detection parameters file): `models` ({name: Keras model}) exported
  under `workdir` and served by two `serving.server` processes, one without query detection and one
  with it (`action: "log_and_reject"`, default parameters); the first model is each server's default."""
  from serving import export, launch

  entries = []
  for name, model in models.items():
    export.export_classifier(model, f"{workdir}/{name}", sample_images=x[:16], model_name=name)
    entries.append((name, f"{workdir}/{name}"))
  config = f"{workdir}/models.config"
  with open(config, "w") as f:
    f.write(export.models_config_text(entries))
  params = f"{workdir}/detection.config"
  with open(params, "w") as f:
    f.write('action: "log_and_reject"\n')
  detecting = ["--enable_query_detection", f"--query_detection_parameters_file={params}"]
  servers = {}
  try:
    for tag, flags in (("off", []), ("on", detecting)):
      servers[tag] = launch.ServerProcess(entries[0][1], model_name=entries[0][0], log_path=f"{workdir}/{tag}.log",
                                          extra_flags=[f"--model_config_file={config}", *flags]).start()
  except BaseException:
    for server in servers.values():
      server.stop()
    raise
  return servers, params


def named_load(address, model_name, images, clients, seconds, prefix):
  """`clients` threads, each its own named client sending batch-1 requests of distinct images."""
  from pipelines.benchmarks import serving as serving_bench
  return serving_bench.load(address, rest=False, images=images, batch_size=1, clients=clients,
                            seconds=seconds, model_name=model_name, client_id_prefix=prefix)


def detection_metrics(server):
  """The detecting server's `/monitoring/detection` counts (a dict)."""
  from serving import client as client_lib
  with client_lib.PredictClient(server.rest_address, rest=True) as rest:
    return rest._http("GET", "/monitoring/detection")[1]  # pylint: disable=protected-access
