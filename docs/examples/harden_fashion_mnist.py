"""Harden a keras.Sequential LeNet on Fashion-MNIST with lad_tf's Python API, measure it, export it
and ask the served model.

    python docs/examples/harden_fashion_mnist.py            # a few minutes on 2 CPU cores
    LAD_TF_EXAMPLE_SIZE=small python docs/examples/...     # the test suite's short version

Each step is what a user writes in a notebook; the numbers it prints are its own.
"""
import os
import tempfile

import keras
import numpy as np

import lad_tf
from lad_tf.data import datasets
from serving import client, launch

SMALL = os.environ.get("LAD_TF_EXAMPLE_SIZE") == "small"
TRAIN, EPOCHS, HARDEN_EPOCHS, ATTACKED = (3000, 2, 1, 40) if SMALL else (60000, 5, 5, 1000)

# 1. Data: float32 images in [0, 1] and class indices (lad_tf.load_data reads your own folder or .npz).
data = datasets.load("fashion_mnist")
x_train, y_train = data.train.x[:TRAIN], data.train.y[:TRAIN]
x_test, y_test = data.test.x, data.test.y

# 2. A plain Keras classifier returning logits, trained the usual way.
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((28, 28, 1)),
    keras.layers.Conv2D(6, 5, activation="relu"), keras.layers.MaxPooling2D(),
    keras.layers.Conv2D(16, 5, activation="relu"), keras.layers.MaxPooling2D(),
    keras.layers.Flatten(), keras.layers.Dense(120, activation="relu"),
    keras.layers.Dense(84, activation="relu"), keras.layers.Dense(10),
])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
model.fit(x_train, y_train, epochs=EPOCHS, batch_size=128, verbose=0)

# 3. Harden it against L-inf perturbations of 0.1 with the default defence.
hardened, training = lad_tf.harden(model, (x_train, y_train), eps=0.1, epochs=HARDEN_EPOCHS)
print(f"hardened with {training['defence']} in {training['train_s']:.0f} s")

# 4. Measure both models with AutoAttack on the same unseen test images.
report = lad_tf.evaluate(hardened, (x_test, y_test), eps=0.1, examples=ATTACKED, original=model,
                         version="fast" if SMALL else "standard", checks=0 if SMALL else 200)
print(f"original: {report['original']['clean_accuracy']:.1%} clean, {report['original']['robust_accuracy']:.1%} "
      f"under {report['attack']}; hardened: {report['clean_accuracy']:.1%} clean, {report['robust_accuracy']:.1%}")

# 5. Export for TF Serving, serve it, and ask the server.
base = os.path.join(tempfile.mkdtemp(), "fashion")
version = lad_tf.export(hardened, base, model_card=report, class_names=data.spec.class_names,
                        dataset="fashion_mnist", sample_images=x_test[:8])
server = launch.ServerProcess(base, model_name="fashion")
server.start()
try:
  with client.PredictClient(server.grpc_address, model_name="fashion") as served:
    served_classes = served.predict(x_test[:16])["classes"]
finally:
  server.stop()
agree = np.mean(served_classes == np.argmax(hardened.predict(x_test[:16], verbose=0), -1))
print(f"served {version}: its predictions agree with the Keras model on {agree:.0%} of 16 images")
