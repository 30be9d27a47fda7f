"""Data benchmark: peak memory of classifier training on CelebA as the training split grows.

`python -m pipelines.benchmark data [--set=sizes=5000:20000,test=1000,steps=4,repeats=2]`

The benchmark writes a format-faithful local CelebA folder itself (the real one is not on this
machine): `img_align_celeba/*.jpg` (178x218 RGB JPEGs drawn from a seeded generator: smooth random
colour fields with a face-sized ellipse), `list_attr_celeba.txt` (the 40 attribute columns, Smiling
random) and `list_eval_partition.txt`. For each training size it writes a partition file marking that
many images as training (partition 0) and the same `test` images as test (partition 2), then runs
`train_steps` (train_classifier's stage with the epoch cut to `steps` batches of the stream over the
whole split, the command line's default precision) in a fresh process, and records the peak resident
set of that process alone (ru_maxrss from wait4 on it; the JPEG writing stays in the parent). Both
sizes run the same steps on the same test images, so only the training split's size differs.
Goal: the largest size's peak within 1.3x of the smallest's (both splits are streamed).
"""
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
  from PIL import Image  # pillow comes with matplotlib; 3 ms a JPEG where TF's eager encode took 30
  for first in range(0, n, 256):  # resized in batches
    count = min(256, n - first)
    fields = tf.image.resize(rng.random((count, 7, 6, 3)).astype(np.float32), (218, 178), method="bicubic").numpy()
    for j, field in enumerate(fields):
      field[ellipse] = 0.5 * field[ellipse] + 0.5 * rng.random(3)
      name = f"{first + j + 1:06d}.jpg"
      Image.fromarray(np.clip(field * 255, 0, 255).astype(np.uint8)).save(os.path.join(images, name), quality=90)
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


def train_steps(data_dir, steps, seed):
  """What `train_classifier --dataset=celeba_smile --epochs=1` does (load, calibration split, one
  epoch of the spec's classifier with validation on the evaluation part, then its accuracy), with
  the epoch cut to `steps` batches of the whole-split stream: the run measures memory, not accuracy
  (one CelebANet batch takes over a minute on this machine). Returns the evaluation accuracy."""
  import keras
  from lad_tf import models
  from lad_tf.data import datasets
  from lad_tf.runtime import execution, losses, training
  spec = datasets.get_spec("celeba_smile")
  data = datasets.load(spec.name, data_dir=data_dir)
  _, evaluation = datasets.calibration_split(data.test, spec.calibration_per_class, seed)
  run = execution.ExecutionConfig(seed=seed, verbose=0, precision="auto")
  run.seed_everything()
  model = models.build_classifier(spec.classifier, spec.image_shape, spec.num_classes)
  train_ds = datasets.to_tf_dataset(data.train, spec.classifier_batch_size, shuffle=True, seed=seed).take(steps)
  with datasets.naming_unreadable_files(data.train, evaluation):
    execution.fit(model, losses.classification, train_ds, run, 1, lambda: keras.optimizers.Adam(1e-3),
                  validation_data=datasets.to_tf_dataset(evaluation, 512), name="classifier")
  return training.accuracy(model, evaluation.x, evaluation.y)


def _peak_mb(data_dir, steps, seed):
  """Runs train_steps in a fresh process; its own peak resident set (ru_maxrss from wait4 on it)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2")
  start = time.perf_counter()
  with tempfile.TemporaryFile("w+") as out:
    child = subprocess.Popen([sys.executable, "-m", "pipelines.benchmarks.data", data_dir, str(steps), str(seed)],
                             cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    out.seek(0)
    lines = out.read().splitlines()
  result = [l for l in lines if l.startswith("ACCURACY ")]
  if child.returncode != 0 or not result:
    raise RuntimeError("the training process failed:\n" + "\n".join(lines[-40:]))
  return usage.ru_maxrss / 1024.0, seconds, float(result[-1].split()[1])


def run(dataset="celeba_smile", n=0, seed=0, sizes="5000:20000", test=1000, steps=4, repeats=2):
  del dataset, n  # always the generated CelebA folder
  sizes = tuple(int(s) for s in str(sizes).split(":"))
  root = tempfile.mkdtemp(prefix="lad_tf-bench-data-")
  try:
    shared = os.path.join(root, "shared")
    start = time.perf_counter()
    write_faces(shared, max(sizes) + test, seed)
    print(f"[data] wrote {max(sizes) + test} JPEGs in {time.perf_counter() - start:.0f} s", flush=True)
    runs = {str(size): [] for size in sizes}
    for repeat in range(int(repeats)):  # the sizes alternate, so drifts of the shared machine hit both
      for size in sizes:
        folder = os.path.join(root, f"celeba-{size}")
        if not repeat:
          _variant(shared, folder, size, test)
        peak, seconds, accuracy = _peak_mb(folder, int(steps), seed)
        runs[str(size)].append({"peak_rss_mb": peak, "seconds": seconds, "evaluation_accuracy": accuracy})
        print(f"[data] {size} training images: peak {peak:.0f} MB, {seconds:.0f} s", flush=True)
    figures = {size: {"peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "runs": rs} for size, rs in runs.items()}
  finally:
    shutil.rmtree(root, ignore_errors=True)
  ratio = figures[str(max(sizes))]["peak_rss_mb"] / figures[str(min(sizes))]["peak_rss_mb"]
  return {"dataset": "celeba_smile (generated, format-faithful local folder)", "sizes": list(sizes),
          "repeats": int(repeats), "peak_rss_mb": "the largest of the size's runs",
          "test_images": test, "by_size": figures, "peak_ratio": ratio, "goal_ratio": GOAL_RATIO,
          "goal_met": bool(ratio <= GOAL_RATIO),
          "train_steps": int(steps), "batch_size": 128, "classifier": "celebanet", "precision": "auto",
          "measured": "ru_maxrss (wait4) of the fresh process that loads, streams and trains",
          "command": "python -m pipelines.benchmarks.data D STEPS SEED (train_classifier's stage, epoch cut "
                     "to STEPS batches of the whole-split stream)",
          "data": "generated by write_faces from a seeded generator (the real CelebA is not on this machine)"}


if __name__ == "__main__":  # the measured process: python -m pipelines.benchmarks.data DATA_DIR STEPS SEED
  print("ACCURACY", train_steps(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])), flush=True)
