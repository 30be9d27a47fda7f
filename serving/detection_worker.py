"""The server's query detector: `detection.QueryDetector` in a process of its own, fed in batches.

Judging a query is some tens of microseconds of numpy work on small arrays. In a thread of the
server, that work contends for the server's GIL with the request threads, and on a busy 2-core
machine the handoffs cost more than the work: a tenth of the throughput and several milliseconds
of p99 (docs/DETECTION.md, Cost). Here a request only appends its images to a list. A feeder thread
wakes every POLL_SECONDS, sends what was queued to the judging process (`python -m
serving.detection_worker`) in one message and reads back the clients it flagged. A client is
flagged at the same query as in-process; it is refused from its first request after the feeder
hears of it, within about POLL_SECONDS. If the judging process dies, the feeder logs it and starts
another, with an empty store.
"""
import collections
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from serving import detection

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # Each wake of the feeder costs the server's request threads a GIL handoff.
MAX_PENDING = 4096  # Requests queued before `check` waits for the judge: detection never lags far.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DetectorProcess:
  """What the server's request path calls: `check`, `metrics`; `flush` and `close` for the owner."""

  def __init__(self, config):
    self.config = config
    self._pending = collections.deque()  # (client, images); append and popleft need no lock.
    self._refused = {}  # client -> query that flagged it: refused when the action rejects.
    self._rejected = self._restarts = 0
    self._lock = threading.Lock()  # Guards the counts above.
    self._pipe = threading.Lock()  # One round trip with the judge at a time.
    self._wake = threading.Event()
    self._closed = False
    self._child = self._start_judge()
    self._feeder = threading.Thread(target=self._feed, name="query-detector-feeder", daemon=True)
    self._feeder.start()

  def check(self, client, images):
    """Raises PERMISSION_DENIED when `client` is flagged and the action rejects; otherwise queues
    the images for the judge."""
    if self.config.rejects and client in self._refused:
      with self._lock:
        self._rejected += 1
      raise detection.refusal()
    while len(self._pending) >= MAX_PENDING and not self._closed:  # The judge is behind: wait for it.
      self._wake.set()
      time.sleep(0.001)
    self._pending.append((client, np.asarray(images)))

  def flush(self):
    """Returns once every request queued so far is judged."""
    with self._pipe:
      self._send_pending()

  def metrics(self):
    """The judge's counts and store size for the monitoring endpoint, up to the last request."""
    with self._pipe:
      self._send_pending()
      out = self._call("metrics", None) or {"enabled": True, "action": self.config.action}
    with self._lock:
      out.update(requests_rejected=self._rejected, judge_restarts=self._restarts)
    return out

  def close(self):
    self._closed = True
    self._wake.set()
    with self._pipe:
      self._stop_judge()

  def _feed(self):
    while not self._closed:
      self._wake.wait(POLL_SECONDS)  # Polled, not woken per request: a request wakes no thread.
      self._wake.clear()
      with self._pipe:
        if not self._closed:
          self._send_pending()

  def _send_pending(self):
    """Under the pipe lock: one round trip for everything queued."""
    requests = [self._pending.popleft() for _ in range(len(self._pending))]
    if not requests:
      return
    reply = self._call("judge", requests)
    if reply is not None:
      flagged, forgotten = reply
      self._refused.update(flagged)
      for client in forgotten:  # The store dropped them: like any new client, judged afresh.
        self._refused.pop(client, None)

  def _call(self, kind, payload):
    """Under the pipe lock: the judge's reply, or None when it died (it is restarted)."""
    try:
      pickle.dump((kind, payload), self._child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
      self._child.stdin.flush()
      return pickle.load(self._child.stdout)
    except (OSError, EOFError, pickle.UnpicklingError) as e:
      if self._closed:
        return None
      log.error("query detection: the judging process failed (%s: %s); starting another, with an "
                "empty store (%s unjudged)", type(e).__name__, e,
                f"{len(payload)} requests" if kind == "judge" else "nothing")
      self._stop_judge()
      self._child = self._start_judge()
      with self._lock:
        self._restarts += 1
      return None

  def _start_judge(self):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (_ROOT, os.environ.get("PYTHONPATH")) if p))
    child = subprocess.Popen([sys.executable, "-m", "serving.detection_worker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, env=env)
    pickle.dump(self.config, child.stdin)
    child.stdin.flush()
    return child

  def _stop_judge(self):
    try:
      self._child.stdin.close()  # The judge exits at the end of its input.
      self._child.wait(5)
    except (OSError, subprocess.TimeoutExpired):
      self._child.kill()
      self._child.wait()


def serve(inputs, outputs):
  """The judging process's loop: (kind, payload) messages in, one reply each out, until EOF."""
  judge = detection.QueryDetector(pickle.load(inputs))
  while True:
    try:
      kind, payload = pickle.load(inputs)
    except EOFError:
      return
    if kind == "judge":
      reply = (judge.judge(payload), judge.forgotten_flagged)
      judge.forgotten_flagged = []
    else:
      reply = judge.metrics()
    pickle.dump(reply, outputs, protocol=pickle.HIGHEST_PROTOCOL)
    outputs.flush()


def main():
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # The server stops it by closing its input.
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  outputs = os.fdopen(os.dup(1), "wb")
  os.dup2(2, 1)  # Stray prints go to the log, never into the replies.
  serve(sys.stdin.buffer, outputs)


if __name__ == "__main__":
  main()
