"""The model zoo: output shapes, the phi / f_p split, and the layer sizes the paper's tables define."""
import keras
import numpy as np
import pytest

from lad_tf import models

ZOO = [("lenet5", (28, 28, 1), 10, 500, "lenet5_decoder"),
       ("svhnnet", (32, 32, 3), 10, 4096, "svhnnet_decoder"),
       ("celebanet", (128, 128, 3), 2, 4096, "celebanet_decoder"),
       ("black_cnn", (28, 28, 1), 10, 128, "conv_decoder"),
       ("madry_cnn", (28, 28, 1), 10, 1024, "conv_decoder")]


@pytest.mark.parametrize("name,shape,classes,latent_dim,decoder", ZOO)
def test_classifier_split_and_decoder(name, shape, classes, latent_dim, decoder):
  keras.utils.set_random_seed(0)
  model = models.build_classifier(name, shape, classes)
  assert model.output_shape == (None, classes)
  phi, head = models.split_at_latent(model)
  assert phi.output_shape == (None, latent_dim)
  x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
  np.testing.assert_allclose(head(phi(x)).numpy(), model(x).numpy(), atol=1e-6)
  # the split shares the model's weights: changing one changes the other
  model.get_layer("latent").kernel.assign(model.get_layer("latent").kernel * 2.0)
  np.testing.assert_allclose(head(phi(x)).numpy(), model(x).numpy(), atol=1e-5)
  generator = models.build_generator(decoder, latent_dim, shape)
  images = generator(np.zeros((2, latent_dim), np.float32)).numpy()
  assert images.shape == (2, *shape) and images.min() >= 0.0 and images.max() <= 1.0


def _params(model, layer):
  return model.get_layer(layer).count_params()


def test_lenet5_matches_the_paper():
  model = models.build_classifier("lenet5", (28, 28, 1), 10)
  assert _params(model, "conv1") == 20 * (5 * 5 * 1) + 20
  assert _params(model, "conv2") == 50 * (5 * 5 * 20) + 50
  assert _params(model, "latent") == 800 * 500 + 500
  assert _params(model, "logits") == 500 * 10 + 10


def test_madry_cnn_matches_madry_et_al():
  model = models.build_classifier("madry_cnn", (28, 28, 1), 10)
  assert _params(model, "conv1") == 32 * (5 * 5 * 1) + 32
  assert _params(model, "conv2") == 64 * (5 * 5 * 32) + 64
  assert _params(model, "latent") == 7 * 7 * 64 * 1024 + 1024
  assert _params(model, "logits") == 1024 * 10 + 10
  assert model.count_params() == 3_274_634  # the published model's size


def test_svhnnet_matches_table_xii():
  model = models.build_classifier("svhnnet", (32, 32, 3), 10)
  assert model.get_layer("flatten").output.shape[-1] == 512 * 4 * 4
  assert _params(model, "latent") == 512 * 4 * 4 * 4096 + 4096
  assert _params(model, "fc2") == 4096 * 2048 + 2048
  assert _params(model, "fc3") == 2048 * 512 + 512
  assert _params(model, "logits") == 512 * 10 + 10


def test_celebanet_matches_table_xiv():
  model = models.build_classifier("celebanet", (128, 128, 3), 2)
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  assert [l.filters for l in convs] == [64, 128, 256, 256, 512, 512, 512, 512]  # VGG11
  assert _params(model, "latent") == 512 * 4 * 4 * 4096 + 4096
  assert _params(model, "fc2") == 4096 * 2048 + 2048


def test_decoders_match_tables_xi_xiii_xv():
  lenet_decoder = models.build_generator("lenet5_decoder", 500, (28, 28, 1))
  assert _params(lenet_decoder, "fc") == 500 * 50 * 4 * 4 + 50 * 4 * 4
  assert lenet_decoder.get_layer("deconv1").output.shape[1:3] == (14, 14)  # kernel 2, stride 4 on 4x4
  svhn_decoder = models.build_generator("svhnnet_decoder", 4096, (32, 32, 3))
  assert _params(svhn_decoder, "fc") == 4096 * 512 * 2 * 2 + 512 * 2 * 2
  light = models.build_generator("svhnnet_decoder_light", 4096, (32, 32, 3))  # the CPU option: half width
  assert light.output_shape[1:] == (32, 32, 3)
  widths = lambda m: [l.filters for l in m.layers if isinstance(l, keras.layers.Conv2D)]
  assert widths(light) == [w // 2 for w in widths(svhn_decoder)[:-1]] + [3]
  celeba_decoder = models.build_generator("celebanet_decoder", 4096, (128, 128, 3))
  assert _params(celeba_decoder, "fc") == 4096 * 512 * 4 * 4 + 512 * 4 * 4


def test_split_a_users_model_at_a_named_layer():
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
  x = keras.layers.GlobalAveragePooling2D()(x)
  z = keras.layers.Dense(16, activation="tanh", name="embedding")(x)
  outputs = keras.layers.Dense(5)(keras.layers.Dropout(0.1)(z))
  model = keras.Model(inputs, outputs)
  phi, head = models.split_at_latent(model, "embedding")
  x = np.random.default_rng(1).random((4, 8, 8, 3), dtype=np.float32)
  np.testing.assert_allclose(head(phi(x)).numpy(), model(x).numpy(), atol=1e-6)


def test_split_at_a_missing_layer_names_the_layers():
  model = models.build_classifier("lenet5", (28, 28, 1), 10)
  with pytest.raises(ValueError, match="no layer 'fc7'.*conv1"):
    models.split_at_latent(model, "fc7")


def test_unknown_architecture():
  with pytest.raises(KeyError, match="known: black_cnn, celebanet, lenet5, madry_cnn, svhnnet"):
    models.build_classifier("resnet50", (28, 28, 1), 10)
