"""JSMA, the Jacobian-based saliency map attack (Papernot et al. 2016), targeted, batched TensorFlow.

cleverhans 4 has no JSMA and ART's (a simplified single-gradient variant) runs in numpy, so this is
our own implementation of the algorithm as cleverhans 2/3 ran it: at each step the pair of input
values (p, q) in the search domain is chosen that maximises -alpha * beta, where
alpha = dF_t/dx_p + dF_t/dx_q > 0 and beta = sum over the other classes j of dF_j/dx_p + dF_j/dx_q
< 0 (F: softmax probabilities by default, or logits; t: target); both values move by theta
(clipped to [0, 1]) and leave the domain. An example stops when the model says the target or when
gamma of its values have changed.

Speed: one step costs one forward and one backward pass for the batch (two on logits: the target
logit and the sum of all logits), and the pair search is exact but cheap. With u = alpha's terms
and v = -beta's terms per value (signs flipped for theta < 0), a valid pair scores
U * V <= ((s_p + s_q) / 2)^2 with
s = u + v, so the best pair among the K values of largest s is provably the best overall when its
score reaches ((s_1 + s_{K+1}) / 2)^2; only examples without that certificate are searched over all
pairs (if the image has at most `max_full_features` values; otherwise the top-K answer is kept).
The steps run in segments inside a tf.function; between segments, finished examples leave the batch.
"""
import numpy as np
import tensorflow as tf

from lad_tf.attacks import common

_SEGMENT = 8  # steps per tf.function call; finished examples are dropped between calls


def _best_pair(u, v, domain, k, full_fallback):
  """Exact argmax over pairs p != q in the domain of (u_p + u_q) * (v_p + v_q), subject to both sums
  being positive; returns (p, q), the two values of largest u + v where no pair qualifies."""
  n = tf.shape(u)[0]
  num_features = u.shape[1]
  s = tf.where(domain, u + v, -np.inf)
  top_k = min(k + 1, num_features)
  s_top, cand_all = tf.math.top_k(s, k=top_k, sorted=True)
  kk = min(k, num_features)
  cand = cand_all[:, :kk]
  s_next = s_top[:, kk] if top_k > kk else tf.fill([n], -np.inf)

  def pair_scores(uc, vc, dc):
    m = tf.shape(uc)[1]
    big_u = uc[:, :, None] + uc[:, None, :]
    big_v = vc[:, :, None] + vc[:, None, :]
    off_diagonal = tf.logical_not(tf.eye(m, dtype=tf.bool))[None]
    ok = dc[:, :, None] & dc[:, None, :] & off_diagonal & (big_u > 0) & (big_v > 0)
    scores = tf.reshape(tf.where(ok, big_u * big_v, -np.inf), [tf.shape(uc)[0], -1])
    best = tf.argmax(scores, axis=1, output_type=tf.int32)
    return best // m, best % m, tf.reduce_max(scores, axis=1)

  uc = tf.gather(u, cand, batch_dims=1)
  vc = tf.gather(v, cand, batch_dims=1)
  dc = tf.gather(domain, cand, batch_dims=1)
  bp, bq, best_score = pair_scores(uc, vc, dc)
  p = tf.gather(cand, bp, batch_dims=1)
  q = tf.gather(cand, bq, batch_dims=1)
  bound = tf.square(tf.maximum(s_top[:, 0] + s_next, 0.0) / 2.0)
  certified = (best_score >= bound) | (s_top[:, 0] + s_next <= 0)
  if num_features > kk and full_fallback:
    uncertified = tf.cast(tf.where(tf.logical_not(certified))[:, 0], tf.int32)

    def one_example(row):
      fp, fq, fs = pair_scores(u[row][None], v[row][None], domain[row][None])
      return fp[0], fq[0], fs[0]

    def full_search():
      # One example at a time (tf.map_fn), so memory stays at one features x features matrix.
      fp, fq, fs = tf.map_fn(one_example, uncertified,
                             fn_output_signature=(tf.int32, tf.int32, tf.float32))
      rows = uncertified[:, None]
      return (tf.tensor_scatter_nd_update(p, rows, fp), tf.tensor_scatter_nd_update(q, rows, fq),
              tf.tensor_scatter_nd_update(best_score, rows, fs))

    p, q, best_score = tf.cond(tf.size(uncertified) > 0, full_search, lambda: (p, q, best_score))
  found = best_score > -np.inf
  # No pair with both sums positive: take the two values that help the target most (largest s).
  p = tf.where(found, p, cand_all[:, 0])
  q = tf.where(found, q, cand_all[:, 1] if top_k > 1 else cand_all[:, 0])
  return p, q


@tf.function(reduce_retracing=True)
def _jsma_segment(model_fn, flat, domain, target, image_shape, theta, n_steps, k, increase,
                  full_fallback, use_logits):
  """Runs up to n_steps JSMA steps; returns (flat, domain, stopped)."""
  n = tf.shape(flat)[0]
  num_features = flat.shape[1]
  shape = tf.concat([[n], image_shape], axis=0)
  sign = 1.0 if increase else -1.0
  num_classes = model_fn(tf.reshape(flat[:1], tf.concat([[1], image_shape], axis=0))).shape[-1]
  target_hot = tf.one_hot(target, num_classes)

  def body(i, flat, domain, stopped):
    if use_logits:
      with tf.GradientTape(persistent=True) as tape:
        tape.watch(flat)
        logits = model_fn(tf.reshape(flat, shape))
        target_logit = tf.reduce_sum(logits * target_hot)
        all_logits = tf.reduce_sum(logits)
      grad_target = tape.gradient(target_logit, flat)
      grad_other = tape.gradient(all_logits, flat) - grad_target
      del tape
    else:
      # Probabilities sum to one, so the other classes' derivatives sum to minus the target's.
      with tf.GradientTape() as tape:
        tape.watch(flat)
        logits = model_fn(tf.reshape(flat, shape))
        target_prob = tf.reduce_sum(tf.nn.softmax(logits) * target_hot)
      grad_target = tape.gradient(target_prob, flat)
      grad_other = -grad_target
    reached = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), target)
    enough = tf.reduce_sum(tf.cast(domain, tf.int32), axis=1) >= 2
    stopped = stopped | reached | tf.logical_not(enough)
    p, q = _best_pair(sign * grad_target, -sign * grad_other, domain, k, full_fallback)
    active = tf.cast(tf.logical_not(stopped), flat.dtype)[:, None]
    chosen = (tf.one_hot(p, num_features) + tf.one_hot(q, num_features)) * active
    flat = tf.clip_by_value(flat + theta * chosen, common.CLIP_MIN, common.CLIP_MAX)
    domain = domain & tf.logical_not(chosen > 0)
    return i + 1, flat, domain, stopped

  def cond(i, flat, domain, stopped):
    return (i < n_steps) & tf.logical_not(tf.reduce_all(stopped))

  _, flat, domain, stopped = tf.while_loop(
      cond, body, [tf.constant(0), flat, domain, tf.zeros([n], tf.bool)])
  return flat, domain, stopped


def jsma(model_fn, x, y_target, theta=1.0, gamma=0.1, use_logits=False, batch_size=256, candidates=64,
         max_full_features=4096):
  """Targeted JSMA over pairs of input values.

  Args:
    model_fn: callable mapping a float32 NHWC image batch to logits (e.g. a Keras model).
    x: images, float32 NHWC in [0, 1] (numpy array or tf.Tensor).
    y_target: target class index per image (or one-hot rows).
    theta: change applied to each chosen input value (1.0: set it to white; negative values darken,
      -1.0 sets it to black), clipped to [0, 1]; in [-1, 0) or (0, 1].
    gamma: largest fraction of input values an example may change (0.1: 10%, as in the paper).
    use_logits: False (default) takes the derivatives of the softmax probabilities, as cleverhans
      2/3 did (the JSMA the LAD paper ran; Carlini & Wagner's "JSMA-F"): the others' derivatives
      then sum to minus the target's, one backward pass per step suffices, and the best pair is the
      two values of largest target derivative. True takes the derivatives of the logits ("JSMA-Z",
      two backward passes per step), which succeeds less often on our LeNets.
    batch_size: images attacked together.
    candidates: K, the number of most salient values whose pairs are scored first (exactness is
      kept by the certificate described in the module docstring).
    max_full_features: images with at most this many values fall back to the exact all-pairs search
      when the top-K answer is not certified; larger images keep the top-K answer.
  Returns:
    float32 numpy array of adversarial images in [0, 1]. Examples the attack could not move to their
    target within the gamma budget come back with the changes made so far.
  """
  common.check_model_fn(model_fn)
  x = common.as_images(x)
  if not (0 < abs(theta) <= 1):
    raise ValueError(f"jsma: theta must be in [-1, 0) or (0, 1], got {theta}")
  if not 0 < gamma <= 1:
    raise ValueError(f"jsma: gamma must be in (0, 1], got {gamma}")
  if candidates < 2:
    raise ValueError(f"jsma: candidates must be >= 2, got {candidates}")
  if len(x) == 0:
    return x.copy()
  num_classes = common.num_classes_of(model_fn, x)
  y_target = common.as_labels(y_target, len(x), "y_target", num_classes).astype(np.int32)
  num_features = int(np.prod(x.shape[1:]))
  max_iters = int(np.floor(gamma * num_features / 2))
  if max_iters < 1:
    raise ValueError(f"jsma: gamma={gamma} allows no change to {num_features} input values")
  k = min(num_features, int(candidates))
  full_fallback = num_features <= max_full_features
  image_shape = tf.constant(x.shape[1:], tf.int32)
  increase = bool(theta > 0)

  out = np.reshape(x.copy(), (len(x), -1))
  for start in range(0, len(x), batch_size):
    rows = np.arange(start, min(start + batch_size, len(x)))
    flat = out[rows]
    domain = flat < common.CLIP_MAX if increase else flat > common.CLIP_MIN
    done = 0
    while done < max_iters and len(rows):
      steps = min(_SEGMENT, max_iters - done)
      flat_t, domain_t, stopped = _jsma_segment(
          model_fn, tf.constant(flat), tf.constant(domain), tf.constant(y_target[rows]), image_shape,
          tf.constant(float(theta)), tf.constant(steps), k, increase, full_fallback,
          bool(use_logits))
      flat, domain, stopped = flat_t.numpy(), domain_t.numpy(), stopped.numpy()
      out[rows] = flat
      done += steps
      keep = ~stopped
      rows, flat, domain = rows[keep], flat[keep], domain[keep]
  return np.reshape(out, x.shape)
