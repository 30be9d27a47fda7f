"""Per-example training losses, one per method: `loss_fn(model, x, y, training) -> (batch,) losses`.

`x` is an image batch, or a dict with the images under "image" and per-example extras the method
uses ("guide": the boundary-guided start direction in {-1, 0, 1}, "target": the nearest-boundary
class, "decoded": LAD's decoded example; see lad_tf.robust.boundary_start; "index": the example's
training row, for carried perturbations). Each loss builds its own
adversary inside the graph (lad_tf.robust.adversaries), so a trainer only minimises the mean.

`step_scale` (a non-trainable variable, 1 at the start) multiplies the single-step methods' step: the
catastrophic-overfitting guard shrinks it after a collapse.
"""
import dataclasses

import tensorflow as tf

from lad_tf.robust import adversaries as adv
from lad_tf.runtime.losses import cross_entropy


def images_of(x):
  return x["image"] if isinstance(x, dict) else x


class _Loss:
  """Shared parts: the step-scale variable the guard turns down."""

  def __init__(self):
    self.step_scale = tf.Variable(1.0, trainable=False, dtype=tf.float32, name="step_scale")


class StandardLoss(_Loss):
  """Clean training: CE(f(x), y)."""

  def __call__(self, model, x, y, training=True):
    return cross_entropy(y, adv.logits_of(model, images_of(x), training))


class FgsmRsLoss(_Loss):
  """FGSM with a random start (Wong et al. 2020): start uniform in the eps ball, one step of
  alpha * eps (alpha 1.25), projected back into the ball; CE on the result."""

  def __init__(self, eps, alpha=1.25):
    super().__init__()
    self.eps, self.alpha = float(eps), float(alpha)

  def __call__(self, model, x, y, training=True):
    x = images_of(x)
    start = adv.project(x + adv.uniform_noise(x, self.eps), x, self.eps)
    grad, _ = adv.input_gradient(model, start, lambda logits: cross_entropy(y, logits))
    x_adv = adv.project(start + self.step_scale * self.alpha * self.eps * tf.sign(grad), x, self.eps)
    return cross_entropy(y, adv.logits_of(model, tf.stop_gradient(x_adv), training))


class PgdLoss(_Loss):
  """PGD adversarial training (Madry et al. 2018): CE on PGD-`steps` examples (random start)."""

  def __init__(self, eps, steps=10):
    super().__init__()
    self.eps, self.steps = float(eps), int(steps)

  def __call__(self, model, x, y, training=True):
    x = images_of(x)
    x_adv = adv.pgd(model, x, y, self.eps, self.steps)
    return cross_entropy(y, adv.logits_of(model, x_adv, training))


class TradesLoss(_Loss):
  """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x')), x' maximising the KL by
  `steps` PGD steps from x + 0.001 N(0, 1)."""

  def __init__(self, eps, beta=6.0, steps=10):
    super().__init__()
    self.eps, self.beta, self.steps = float(eps), float(beta), int(steps)

  def __call__(self, model, x, y, training=True):
    x = images_of(x)
    clean_eval = tf.stop_gradient(adv.logits_of(model, x))
    start = tf.clip_by_value(x + 0.001 * tf.random.normal(tf.shape(x)), 0.0, 1.0)
    x_adv = adv.pgd(model, x, y, self.eps, self.steps, start=start,
                    objective=lambda logits: adv.kl_divergence(clean_eval, logits))
    clean = adv.logits_of(model, x, training)
    return cross_entropy(y, clean) + self.beta * adv.kl_divergence(
        clean, adv.logits_of(model, x_adv, training))


@dataclasses.dataclass
class LadRobustOptions:
  """lad_robust's parts; all off but the noise is N-FGSM alone (de Jorge et al. 2022).

  noise: the start's uniform noise radius in units of eps (N-FGSM: 2, i.e. larger than eps).
  step: the signed step in units of eps (N-FGSM: 1). The result is clipped to [0, 1] only, not to
    the eps ball (as N-FGSM).
  guided_fraction: share of each batch whose start follows the boundary-guided direction (same noise
    magnitudes, signs from sign(G(z + t d) - G(z)); pixels the decoder leaves unchanged keep random
    signs). 0: N-FGSM's noise everywhere.
  targeted: the step also lowers the CE of the nearest-boundary class (ascends CE(y) - CE(target)).
  trades_beta: > 0 trains on CE(f(x), y) + beta * KL(f(x) || f(x')) with the step ascending that KL
    (single-step TRADES) instead of CE(f(x'), y).
  manifold_weight: > 0 adds weight * CE(f(x_decoded), y), LAD's Eq. 4 term on decoded examples.
  steps: signed steps of `step` eps each from the start (1: N-FGSM's single step; more: a short PGD
    whose start the boundaries choose, a few input gradients more per batch).
  project: clip the start and every step into the eps ball around x (PGD) as well as into [0, 1];
    False keeps N-FGSM's perturbation beyond eps.
  carry: start each training example where its perturbation ended the last time the example was seen
    (accumulated perturbations, Zheng et al. 2020): over the epochs a one- or two-step adversary adds
    up to a many-step one at no extra gradient. Needs project, x["index"] (the example's row) in
    training batches and LadRobustLoss.allocate; an example seen for the first time starts as without
    carry, and calls with training=False neither read nor write the carried perturbations. The carried
    perturbations live in memory only: a run resumed from its backups starts them afresh.
  """
  noise: float = 2.0
  step: float = 1.0
  steps: int = 1
  project: bool = False
  guided_fraction: float = 0.0
  targeted: bool = False
  trades_beta: float = 0.0
  manifold_weight: float = 0.0
  carry: bool = False

  @classmethod
  def carried(cls, steps=1, **more):
    """`steps` projected steps of eps / steps per batch from each example's carried perturbation (noise
    of radius eps when it is first seen), every LAD part off unless `more` turns one on: the `atta`
    defence (steps=1) and the robust benchmark's carryK rows."""
    return cls(noise=1.0, step=1.0 / steps, steps=steps, project=True, carry=True, **more)


class LadRobustLoss(_Loss):
  """Ours: an N-FGSM-style step (or a few, options.steps) whose start (and optionally aim) LAD's latent
  boundaries choose."""

  def __init__(self, eps, options=LadRobustOptions()):
    super().__init__()
    if not 0.0 <= options.guided_fraction <= 1.0:
      raise ValueError(f"guided_fraction must be in [0, 1], got {options.guided_fraction}")
    if options.steps < 1:
      raise ValueError(f"steps must be at least 1, got {options.steps}")
    if options.carry and not options.project:
      raise ValueError("carry needs project=True: a carried perturbation must stay in the eps ball")
    self.eps, self.options = float(eps), options
    self.carried = self.seen = None

  def needs(self):
    """The per-example extras (keys of x) this configuration reads."""
    o = self.options
    return tuple(k for k, used in (("guide", o.guided_fraction > 0), ("target", o.targeted),
                                   ("decoded", o.manifold_weight > 0), ("index", o.carry)) if used)

  def allocate(self, n, image_shape):
    """Room for the carried perturbations of n training examples (options.carry), all unseen."""
    self.carried = tf.Variable(tf.zeros((n, *image_shape)), trainable=False, name="carried_perturbation")
    self.seen = tf.Variable(tf.zeros((n,), tf.bool), trainable=False, name="carried_seen")

  def start(self, x, features):
    o = self.options
    magnitude = o.noise * self.eps
    noise = adv.uniform_noise(x, magnitude)
    if o.guided_fraction > 0:
      guide = tf.cast(features["guide"], x.dtype)
      guided = tf.where(guide != 0, tf.abs(noise) * guide, noise)
      n = tf.shape(x)[0]
      use = tf.range(n) < tf.cast(tf.round(o.guided_fraction * tf.cast(n, tf.float32)), tf.int32)
      noise = tf.where(use[:, None, None, None], guided, noise)
    return self.bound(x + noise, x)

  def bound(self, x_adv, x):
    """Into [0, 1], and into the eps ball around x when the options project."""
    return adv.project(x_adv, x, self.eps) if self.options.project else tf.clip_by_value(x_adv, 0.0, 1.0)

  def __call__(self, model, x, y, training=True):
    o = self.options
    features = x if isinstance(x, dict) else {}
    missing = [k for k in self.needs() if k not in features and k != "index"]
    if missing:
      raise ValueError(f"lad_robust with these options needs x[{missing}] (boundary_start.features)")
    x = images_of(x)
    start = self.start(x, features)
    # only training batches carry: evaluation, validation and the executor's metric probe (all
    # training=False) must leave the buffer as training left it
    carry = o.carry and training
    if carry:
      if "index" not in features:
        raise ValueError("lad_robust with carry=True needs x['index'] (each example's training row) in "
                         "every training batch; without it no perturbation would be carried")
      if self.carried is None:
        raise ValueError("lad_robust with carry=True needs allocate(n, image_shape) before training")
      rows = features["index"]
      seen = tf.gather(self.seen, rows)[:, None, None, None]
      start = tf.where(seen, self.bound(x + tf.gather(self.carried, rows), x), start)
    if o.trades_beta > 0:
      clean_eval = tf.stop_gradient(adv.logits_of(model, x))
      base = lambda logits: adv.kl_divergence(clean_eval, logits)
    else:
      base = lambda logits: cross_entropy(y, logits)
    objective = base
    if o.targeted:
      objective = lambda logits: base(logits) - cross_entropy(features["target"], logits)
    x_adv = start
    for _ in range(o.steps):
      grad, _ = adv.input_gradient(model, x_adv, objective)
      x_adv = self.bound(x_adv + self.step_scale * o.step * self.eps * tf.sign(grad), x)
    x_adv = tf.stop_gradient(x_adv)
    if carry:
      self.carried.scatter_nd_update(rows[:, None], x_adv - x)
      self.seen.scatter_nd_update(rows[:, None], tf.ones_like(rows, tf.bool))
    adv_logits = adv.logits_of(model, x_adv, training)
    if o.trades_beta > 0:
      clean = adv.logits_of(model, x, training)
      losses = cross_entropy(y, clean) + o.trades_beta * adv.kl_divergence(clean, adv_logits)
    else:
      losses = cross_entropy(y, adv_logits)
    if o.manifold_weight > 0:
      losses += o.manifold_weight * cross_entropy(y, adv.logits_of(model, features["decoded"], training))
    return losses
