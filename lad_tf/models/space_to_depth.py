"""A Conv2D computed on space_to_depth blocks: the same layer (weights, config, outputs to float
tolerance), faster on CPUs for convolutions with very few output channels.

oneDNN runs a convolution with one output channel (the decoders' last layer, 16 -> 1 channels,
5x5) at a small fraction of the speed it reaches with 16 or more: its vector lanes go along the
channels. Rewriting y = conv(x, k) on blocks of b x b pixels, space_to_depth(b) of the input
convolved with a kernel gathered from k (zeros where a tap falls outside k), then depth_to_space(b),
gives the same sums over the same products (each block-kernel entry is one entry of k or 0) with
b*b times the input and output channels. On lenet5_decoder's image layer this runs forward and
backward in about two thirds of the time (benchmarks/decoder.json, pipelines/benchmarks/decoder.py).
"""
import keras
import numpy as np
from keras import layers


def block_kernel_indices(kernel_size, in_channels, filters, block):
  """Indices into [kernel.ravel(), 0] giving the (kb, kb, b*b*in, b*b*filters) kernel of the same
  convolution on space_to_depth(block) inputs and outputs; kb = ceil((kernel + block - 1) / block).

  Output pixel (block*i + a) reads input rows block*i + a + u for taps u < kernel, i.e. the input
  block i + bi at row offset p where u = block*bi + p - a; taps outside the kernel read the 0.
  """
  kh, kw = kernel_size
  khb, kwb = (-(-(kh + block - 1) // block), -(-(kw + block - 1) // block))
  zero = kh * kw * in_channels * filters
  index = np.full((khb, kwb, block, block, in_channels, block, block, filters), zero, np.int32)
  flat = (np.arange(in_channels)[:, None] * filters + np.arange(filters)[None, :])
  for bi in range(khb):
    for bj in range(kwb):
      for p in range(block):
        for q in range(block):
          for a in range(block):
            for b in range(block):
              u, v = block * bi + p - a, block * bj + q - b
              if 0 <= u < kh and 0 <= v < kw:
                index[bi, bj, p, q, :, a, b, :] = (u * kw + v) * in_channels * filters + flat
  return index.reshape(khb, kwb, block * block * in_channels, block * block * filters)


@keras.saving.register_keras_serializable(package="lad_tf")
class SpaceToDepthConv2D(layers.Conv2D):
  """keras.layers.Conv2D (stride 1, valid padding, channels_last) computed on `block` x `block`
  pixel blocks. Same weights and outputs as Conv2D; use it where `filters` is small (1-4)."""

  def __init__(self, filters, kernel_size, block=2, **kwargs):
    super().__init__(filters, kernel_size, **kwargs)
    if tuple(self.strides) != (1, 1) or tuple(self.dilation_rate) != (1, 1) or self.padding != "valid" \
        or self.data_format != "channels_last" or self.groups != 1:
      raise ValueError("SpaceToDepthConv2D computes stride-1, undilated, ungrouped, valid, channels_last "
                       "convolutions only; use keras.layers.Conv2D for the others")
    if int(block) < 1:
      raise ValueError(f"block must be a positive number of pixels, got {block}")
    self.block = int(block)
    self._index = None

  def build(self, input_shape):
    super().build(input_shape)
    self._index = block_kernel_indices(self.kernel_size, int(input_shape[-1]), self.filters, self.block)

  def convolution_op(self, inputs, kernel):
    import tensorflow as tf
    b = self.block
    kh, kw = self.kernel_size
    height, width = tf.shape(inputs)[1], tf.shape(inputs)[2]
    out_h, out_w = height - kh + 1, width - kw + 1
    # enough rows and columns for whole output blocks (the extra zeros meet only zero taps or
    # feed outputs cropped below)
    khb, kwb = self._index.shape[:2]
    pad_h = b * ((out_h + b - 1) // b + khb - 1) - height
    pad_w = b * ((out_w + b - 1) // b + kwb - 1) - width
    x = tf.pad(inputs, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    taps = tf.concat([tf.reshape(kernel, [-1]), tf.zeros([1], kernel.dtype)], 0)
    y = tf.nn.conv2d(tf.nn.space_to_depth(x, b), tf.gather(taps, self._index), 1, "VALID")
    return tf.nn.depth_to_space(y, b)[:, :out_h, :out_w, :]

  def get_config(self):
    return {**super().get_config(), "block": self.block}
