"""Data benchmark: peak memory of classifier training on CelebA as the training split grows.

`python -m pipelines.benchmark data [--set=sizes=5000:20000,test=2000]`

The benchmark writes a format-faithful local CelebA folder itself (the real one is not on this
machine): `img_align_celeba/*.jpg` (178x218 RGB JPEGs drawn from a seeded generator: smooth random
colour fields with a face-sized ellipse), `list_attr_celeba.txt` (the 40 attribute columns, Smiling
random) and `list_eval_partition.txt`. For each training size it writes a partition file marking that
many images as training (partition 0) and the same `test` images as test (partition 2), then runs
`python -m pipelines.train_classifier --dataset=celeba_smile --data_dir=... --epochs=1` in a fresh
process and records that process's peak resident set (ru_maxrss of the child). Goal: the largest
size's peak within 1.3x of the smallest's (streamed training images; the test split is decoded).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ATTRIBUTES = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
              "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
              "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
              "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
              "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie "
              "Young").split()
GOAL_RATIO = 1.3
# the child's peak resident set, measured by a fresh interpreter around it
_MEASURE = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'CODE', code)")


def write_faces(folder, n, seed=0):
  """n seeded 178x218 JPEG faces-to-be and their attribute file in `folder` (CelebA's layout)."""
  import tensorflow as tf
  images = os.path.join(folder, "img_align_celeba")
  os.makedirs(images, exist_ok=True)
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[0:218, 0:178]
  ellipse = (((rows - 120) / 70.0) ** 2 + ((cols - 89) / 55.0) ** 2) < 1.0
  lines = [str(n), " ".join(ATTRIBUTES)]
  smiling = ATTRIBUTES.index("Smiling")
  for i in range(n):
    low = rng.random((7, 6, 3)).astype(np.float32)
    field = tf.image.resize(low[None], (218, 178), method="bicubic")[0].numpy()
    field[ellipse] = 0.5 * field[ellipse] + 0.5 * rng.random(3)
    name = f"{i + 1:06d}.jpg"
    tf.io.write_file(os.path.join(images, name),
                     tf.io.encode_jpeg(tf.cast(np.clip(field, 0, 1) * 255, tf.uint8), quality=90))
    values = rng.choice(["-1", "1"], size=len(ATTRIBUTES))
    values[smiling] = "1" if rng.random() < 0.5 else "-1"
    lines.append(f"{name} {' '.join(values)}")
  with open(os.path.join(folder, "list_attr_celeba.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")


def _variant(shared, folder, train, test):
  """A CelebA folder over the shared images whose partition file has `train` training images."""
  os.makedirs(folder, exist_ok=True)
  os.symlink(os.path.join(shared, "img_align_celeba"), os.path.join(folder, "img_align_celeba"))
  shutil.copy(os.path.join(shared, "list_attr_celeba.txt"), folder)
  with open(os.path.join(folder, "list_eval_partition.txt"), "w") as f:
    for i in range(train + test):
      f.write(f"{i + 1:06d}.jpg {0 if i < train else 2}\n")


def _peak_mb(data_dir, workdir, seed):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  command = [sys.executable, "-m", "pipelines.train_classifier", "--dataset=celeba_smile",
             f"--data_dir={data_dir}", f"--workdir={workdir}", "--epochs=1", f"--seed={seed}"]
  env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2")
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-c", _MEASURE, *command], cwd=root, env=env, capture_output=True,
                          text=True)
  seconds = time.perf_counter() - start
  line = [l for l in result.stdout.splitlines() if l.startswith("PEAK_KB")]
  if result.returncode != 0 or not line or not line[-1].endswith("CODE 0"):
    raise RuntimeError(f"train_classifier failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
  accuracy = json.load(open(os.path.join(workdir, "classifier", "metrics.json")))["test_accuracy"]
  return int(line[-1].split()[1]) / 1024.0, seconds, accuracy


def run(dataset="celeba_smile", n=0, seed=0, sizes="5000:20000", test=2000):
  del dataset, n  # always the generated CelebA folder
  sizes = tuple(int(s) for s in str(sizes).split(":"))
  root = tempfile.mkdtemp(prefix="lad_tf-bench-data-")
  try:
    shared = os.path.join(root, "shared")
    start = time.perf_counter()
    write_faces(shared, max(sizes) + test, seed)
    print(f"[data] wrote {max(sizes) + test} JPEGs in {time.perf_counter() - start:.0f} s", flush=True)
    figures = {}
    for size in sizes:
      folder = os.path.join(root, f"celeba-{size}")
      _variant(shared, folder, size, test)
      peak, seconds, accuracy = _peak_mb(folder, os.path.join(root, f"work-{size}"), seed)
      figures[str(size)] = {"peak_rss_mb": peak, "seconds": seconds, "test_accuracy": accuracy}
      print(f"[data] {size} training images: peak {peak:.0f} MB, {seconds:.0f} s", flush=True)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  ratio = figures[str(max(sizes))]["peak_rss_mb"] / figures[str(min(sizes))]["peak_rss_mb"]
  return {"dataset": "celeba_smile (generated, format-faithful local folder)", "sizes": list(sizes),
          "test_images": test, "by_size": figures, "peak_ratio": ratio, "goal_ratio": GOAL_RATIO,
          "goal_met": bool(ratio <= GOAL_RATIO),
          "command": "python -m pipelines.train_classifier --dataset=celeba_smile --data_dir=D --epochs=1",
          "data": "generated by write_faces from a seeded generator (the real CelebA is not on this machine)"}
