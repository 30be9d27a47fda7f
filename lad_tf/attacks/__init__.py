"""Adversarial attacks on any Keras classifier returning logits, images float32 NHWC in [0, 1].

Each attack is one plain function over `model_fn` (a callable mapping an image batch to logits,
e.g. the Keras model itself), batched, returning a float32 numpy array of adversarial images in
[0, 1], with one argument order: `(model_fn, x, y, eps, ...)` for attacks bounded by an L-inf eps,
`(model_fn, x, y, ...)` for minimal-perturbation ones. y holds the true labels of untargeted
attacks and the target classes of targeted ones.

  fgsm(model_fn, x, y, eps)                           untargeted (or targeted) L-inf, cleverhans 4
  pgd(model_fn, x, y, eps, nb_iter=40)                untargeted (or targeted) L-inf, cleverhans 4
  mim(model_fn, x, y, eps, nb_iter=10, decay=1.0)     momentum iterative FGSM, L-inf (ours)
  jsma(model_fn, x, y_target, theta=1.0, gamma=0.1)   targeted L0 saliency map (ours, TensorFlow)
  carlini_wagner_l2(model_fn, x, y, targeted=...)     CW-L2, targeted or untargeted (ours)
  apgd(model_fn, x, y, eps, loss="ce"|"dlr", y_target=None)   APGD-CE / APGD-DLR, L-inf (ours)
  apgd_targeted(model_fn, x, y, eps, n_target_classes=9)     APGD-T, targeted DLR per top class (ours)
  fab(model_fn, x, y, eps, n_target_classes=9)               FAB-T, minimal L-inf crossing (ours)
  square(model_fn, x, y, eps, n_queries=5000)                Square Attack, gradient-free (ours)
  hop_skip_jump(model_fn, x, y, eps, n_queries=1000)         HopSkipJump, from labels alone (ours)
  autoattack(model_fn, x, y, eps, version="standard")        APGD-CE, APGD-T, FAB-T, Square (ours)

`REGISTRY` (`get(name)`, `register(...)`) is how the evaluation protocol finds and calls them:
`get(name)(model_fn, x, y, eps, **options)`. `perturbation_norms` measures L2 / L-inf / L0.

`query` holds what attacks through an endpoint need: `QueryModel` (a model_fn over any function
answering probabilities or labels), the `*_queries` variants that report the queries each image
took, and `budget_curve` (robust accuracy against the query budget).
"""
import dataclasses
import functools
from typing import Callable, Optional

from lad_tf.attacks.apgd import apgd, apgd_targeted
from lad_tf.attacks.autoattack import autoattack
from lad_tf.attacks.common import perturbation_norms, predict
from lad_tf.attacks.cw import carlini_wagner_l2
from lad_tf.attacks.fab import fab
from lad_tf.attacks.fgsm import fgsm
from lad_tf.attacks.hopskipjump import hop_skip_jump, hop_skip_jump_queries
from lad_tf.attacks.jsma import jsma
from lad_tf.attacks.mim import mim
from lad_tf.attacks.pgd import pgd
from lad_tf.attacks.square import square, square_queries

cw_l2 = carlini_wagner_l2


@dataclasses.dataclass(frozen=True)
class Attack:
  """A registered attack.

  fn: the attack function (see the module docstring for its argument order).
  targeted: True when y are target classes (the protocol then attacks towards every other class).
  norm: "linf" when bounded by an eps (fn takes eps after y), None for minimal-perturbation attacks.
  """
  name: str
  fn: Callable
  targeted: bool
  norm: Optional[str]

  @property
  def bounded(self):
    return self.norm is not None

  def __call__(self, model_fn, x, y, eps=None, **options):
    if self.bounded:
      if eps is None:
        raise ValueError(f"{self.name} needs an eps")
      return self.fn(model_fn, x, y, eps, **options)
    if eps is not None:
      raise ValueError(f"{self.name} is not bounded by an eps (got eps={eps})")
    return self.fn(model_fn, x, y, **options)


REGISTRY = {}


def register(name, fn, targeted, norm):
  """Adds an attack under `name` (replacing one of that name); returns it."""
  REGISTRY[name] = Attack(name, fn, targeted, norm)
  return REGISTRY[name]


def get(name):
  """The registered attack `name`; a clear error listing the known ones otherwise."""
  if name not in REGISTRY:
    raise ValueError(f"unknown attack '{name}'; known: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]


def autoattack_images(model_fn, x, y, eps, **options):
  """autoattack's adversarial images alone (the registry's calling convention); options go to
  `autoattack` (version="standard" or "fast", n_iter, n_queries, seed, ...)."""
  return autoattack(model_fn, x, y, eps, **options)[0]


register("fgsm", fgsm, targeted=False, norm="linf")
register("pgd", pgd, targeted=False, norm="linf")
register("mim", mim, targeted=False, norm="linf")
register("apgd", apgd, targeted=False, norm="linf")
register("jsma", jsma, targeted=True, norm=None)
register("cw", functools.partial(carlini_wagner_l2, targeted=True), targeted=True, norm=None)
register("autoattack", autoattack_images, targeted=False, norm="linf")
register("square", square, targeted=False, norm="linf")
register("hopskipjump", hop_skip_jump, targeted=False, norm="linf")

__all__ = ["fgsm", "pgd", "mim", "jsma", "carlini_wagner_l2", "cw_l2", "apgd", "apgd_targeted", "fab", "square",
           "autoattack", "autoattack_images", "square_queries", "hop_skip_jump", "hop_skip_jump_queries", "Attack",
           "REGISTRY", "register", "get", "perturbation_norms", "predict"]
