"""Adversarial attacks on any Keras classifier returning logits, images float32 NHWC in [0, 1].

Each attack is one plain function over `model_fn` (a callable mapping an image batch to logits,
e.g. the Keras model itself), batched, returning a float32 numpy array of adversarial images in
[0, 1]:

  fgsm(model_fn, x, eps, y=None)                      untargeted (or targeted) L-inf, cleverhans 4
  pgd(model_fn, x, eps, y=None, nb_iter=40)           untargeted (or targeted) L-inf, cleverhans 4
  jsma(model_fn, x, y_target, theta=1.0, gamma=0.1)   targeted L0 saliency map (ours, TensorFlow)
  carlini_wagner_l2(model_fn, x, y, targeted=...)     CW-L2, targeted or untargeted (ours)
  apgd(model_fn, x, y, eps, loss="ce"|"dlr", y_target=None)   APGD-CE / APGD-DLR, L-inf (ours)
  apgd_targeted(model_fn, x, y, eps, n_target_classes=9)     APGD-T, targeted DLR per top class (ours)
  fab(model_fn, x, y, eps, n_target_classes=9)               FAB-T, minimal L-inf crossing (ours)
  square(model_fn, x, y, eps, n_queries=5000)                Square Attack, gradient-free (ours)
  autoattack(model_fn, x, y, eps, version="standard")        APGD-CE, APGD-T, FAB-T, Square (ours)

`ATTACKS` names them for the evaluation protocol; `perturbation_norms` measures L2 / L-inf / L0.
"""
from lad_tf.attacks.apgd import apgd, apgd_targeted
from lad_tf.attacks.autoattack import autoattack
from lad_tf.attacks.common import perturbation_norms, predict
from lad_tf.attacks.cw import carlini_wagner_l2
from lad_tf.attacks.fab import fab
from lad_tf.attacks.fgsm import fgsm
from lad_tf.attacks.jsma import jsma
from lad_tf.attacks.pgd import pgd
from lad_tf.attacks.square import square

cw_l2 = carlini_wagner_l2

# name -> (function, targeted?, bounded by an L-inf eps?)
ATTACKS = {
    "fgsm": (fgsm, False, True),
    "pgd": (pgd, False, True),
    "apgd": (apgd, False, True),
    "jsma": (jsma, True, False),
    "cw": (carlini_wagner_l2, True, False),
}

__all__ = ["fgsm", "pgd", "jsma", "carlini_wagner_l2", "cw_l2", "apgd", "apgd_targeted", "fab",
           "square", "autoattack", "ATTACKS",
           "perturbation_norms", "predict"]
