"""Adam in one pass over each weight.

Keras 3's Adam updates a weight with five elementwise passes (the two moments, then the weight, each
its own kernel reading and writing whole tensors); TensorFlow has the same update as one fused kernel
(ResourceApplyAdam). On svhnNet's 47M weights the optimizer is about a third of a training step
(`python -m pipelines.benchmark kernels`), and its passes are bound by memory, not arithmetic.
"""
import keras


class FusedAdam(keras.optimizers.Adam):
  """keras.optimizers.Adam with each float32 weight updated by TensorFlow's fused Adam kernel: the
  same arithmetic (moments, bias correction, epsilon outside the square root), rounded in its own
  order. Anything else (AMSGrad, another backend or dtype) takes Keras' own update."""

  def update_step(self, gradient, variable, learning_rate):
    import tensorflow as tf
    if self.amsgrad or keras.backend.backend() != "tensorflow" or variable.dtype != "float32":
      return super().update_step(gradient, variable, learning_rate)
    index = self._get_variable_index(variable)
    step = tf.cast(self.iterations + 1, tf.float32)
    beta_1, beta_2 = tf.constant(self.beta_1, tf.float32), tf.constant(self.beta_2, tf.float32)
    handle = lambda v: (v.value if isinstance(v, keras.Variable) else v).handle
    tf.raw_ops.ResourceApplyAdam(
        var=handle(variable), m=handle(self._momentums[index]), v=handle(self._velocities[index]),
        beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
        lr=tf.cast(learning_rate, tf.float32), beta1=beta_1, beta2=beta_2,
        epsilon=tf.constant(self.epsilon, tf.float32), grad=tf.cast(gradient, tf.float32), use_locking=False)
