"""Stateful detection of query-based attacks in the server (Blacklight's idea, our code).

An attacker who holds only the endpoint sends hundreds of images that differ by a perturbation
smaller than the model's eps; benign clients rarely send more than a few copies of one image (a
retry, a re-encoded or slightly shifted copy). Per client, the detector remembers the fingerprint
(`serving.fingerprints`, as a 512-bit sketch) of each recent query and, for each new image, counts
the remembered queries it shares at least `match_threshold` hashes (sketch bits) with:
`neighbours_to_flag` such near-duplicates flag the client. Exact byte-for-byte resubmissions are
answered and not counted (a retry tells an attacker nothing new). Flagged clients are logged and
counted, and with a rejecting action every later request of theirs gets PERMISSION_DENIED (HTTP 403).

The store is bounded: `history_per_client` fingerprints per client in a ring, and the whole store
under `max_memory_mb`, dropping the least recently seen clients first. Only the servable's request
path calls `check`, and only when detection is on: off, it costs one `is None` test per request.
"""
import collections
import logging
import queue
import threading
import time

import grpc
import numpy as np

from serving import errors
from serving import fingerprints as fingerprints_lib

log = logging.getLogger(__name__)

CLIENT_OVERHEAD_BYTES = 512  # Python objects, array headers and the LRU entry of one client.
MAX_LISTED_FLAGGED = 1000  # Flagged clients listed by the monitoring endpoint (most recent).
_FIRST_ROWS = 16
_GROWTH = 8  # A full ring grows by 1/8 (at least _FIRST_ROWS rows): little memory left unused.
MAX_PENDING = 1024  # Requests queued for the background worker before `check` waits.
MAX_BATCH = 256  # Requests the worker fingerprints together.
POLL_SECONDS = 0.005  # How long the idle worker sleeps: requests queued meanwhile form one batch.


class _Client:
  """One client's remembered queries: fingerprint sketches and exact digests in a growing ring."""
  __slots__ = ("fps", "digests", "size", "next", "queries", "flagged_at")

  def __init__(self):
    self.fps = np.zeros((fingerprints_lib.SKETCH_WORDS, _FIRST_ROWS), np.uint64)  # A sketch a column.
    self.digests = np.zeros(_FIRST_ROWS, np.uint32)
    self.size = self.next = self.queries = 0
    self.flagged_at = None  # The query (1-based) that flagged the client.

  @property
  def nbytes(self):
    return self.fps.nbytes + self.digests.nbytes + CLIENT_OVERHEAD_BYTES

  def remember(self, sketch, digest, capacity):
    held = len(self.digests)
    if self.size == held and held < capacity:  # Grow until the capacity.
      rows = min(capacity, held + max(_FIRST_ROWS, held // _GROWTH))
      self.fps = np.concatenate([self.fps, np.zeros((len(self.fps), rows - held), self.fps.dtype)], axis=1)
      self.digests = np.concatenate([self.digests, np.zeros(rows - held, np.uint32)])
    self.fps[:, self.next] = sketch
    self.digests[self.next] = digest
    self.next = (self.next + 1) % len(self.digests)
    self.size = min(self.size + 1, len(self.digests))


def _digest(image):
  """32 bits of the exact bytes (Python's keyed hash of them): a collision only makes one
  near-duplicate pass as a retry."""
  return hash(image.tobytes()) & 0xFFFFFFFF


class QueryDetector:
  """Per-client near-duplicate counting over a bounded store; thread-safe.

  background=False: `check` judges the request's images before it returns. background=True (the
  server's choice): `check` only refuses clients already flagged and queues the images; one worker
  thread collects what is queued (polling every POLL_SECONDS), fingerprints it in one numpy pass per
  image shape and judges it in arrival order, off the request's critical path. A client is then
  flagged a moment after the query that flags it, and refused from its next request on. At most
  MAX_PENDING requests wait (`check` blocks beyond that), so detection never falls far behind.
  """

  def __init__(self, config, background=False):
    self.config = config
    self._clients = collections.OrderedDict()  # client -> _Client, least recently seen first
    self._flagged = collections.OrderedDict()  # client -> query that flagged it (listed only)
    self._lock = threading.Lock()
    self._bytes = 0
    self.counts = collections.Counter()
    self._queue = queue.Queue(MAX_PENDING) if background else None
    self._worker = None

  def check(self, client, images):
    """Raises PERMISSION_DENIED when `client` is flagged and the action rejects; otherwise judges
    the request's images (background: queues them) for `client`."""
    c = self.config
    known = self._clients.get(client)  # A lock-free peek: a refused client costs no fingerprint.
    if c.rejects and known is not None and known.flagged_at is not None:
      self._refuse()
    if self._queue is None:
      if self._record(client, *self.fingerprint(images)) and c.rejects:
        self._refuse()
      return
    if self._worker is None:
      with self._lock:
        if self._worker is None:
          self._worker = threading.Thread(target=self._work, name="query-detector", daemon=True)
          self._worker.start()
    self._queue.put((client, np.asarray(images)))

  def flush(self):
    """Waits until every queued request is judged (background mode; tests and benchmarks)."""
    if self._queue is not None:
      self._queue.join()

  def _work(self):
    while True:
      batch = []
      while len(batch) < MAX_BATCH:
        try:
          batch.append(self._queue.get_nowait())
        except queue.Empty:
          break
      if not batch:  # Polled, not woken per request: a request's put wakes no thread.
        time.sleep(POLL_SECONDS)
        continue
      try:
        for client, sketches, digests in self._fingerprint_batch(batch):
          self._record(client, sketches, digests)
      except Exception:  # pylint: disable=broad-except  The worker must outlive one bad batch.
        log.exception("query detection: a batch of %d requests could not be judged", len(batch))
      finally:
        for _ in batch:
          self._queue.task_done()

  def _fingerprint_batch(self, batch):
    """[(client, sketches, digests)] of queued requests, in order; one fingerprint pass per image
    shape and dtype (so that the digests are those of the bytes sent)."""
    shapes = collections.defaultdict(list)
    for k, (_, images) in enumerate(batch):
      shapes[images.shape[1:], images.dtype].append(k)
    out = [None] * len(batch)
    for members in shapes.values():
      sketches, digests = self.fingerprint(np.concatenate([batch[k][1] for k in members]))
      start = 0
      for k in members:
        n = len(batch[k][1])
        out[k] = (batch[k][0], sketches[start:start + n], digests[start:start + n])
        start += n
    return out

  def fingerprint(self, images):
    """(sketches [n, SKETCH_WORDS], digests [n]) of a request's images; needs no lock."""
    c = self.config
    images = np.asarray(images)
    sketches = fingerprints_lib.sketches(fingerprints_lib.fingerprints(
        images, c.quantization_step, c.window_size, c.hashes_per_query))
    return sketches, [_digest(image) for image in images]

  def _record(self, client, sketches, digests):
    """Counts and remembers `client`'s fingerprinted images in order; returns whether it is flagged."""
    c = self.config
    with self._lock:
      state = self._clients.get(client)
      if state is None:
        state = self._clients[client] = _Client()
        self._bytes += state.nbytes
      else:
        self._clients.move_to_end(client)
      before = state.nbytes
      newly_flagged = self._take(client, state, sketches, digests)
      self._bytes += state.nbytes - before
      self._evict()
    if newly_flagged and c.action != "reject":
      log.warning("query detection: client %s flagged at its query %d (%d near-duplicate "
                  "earlier queries)", client, state.flagged_at, c.neighbours_to_flag)
    return state.flagged_at is not None

  def _refuse(self):
    with self._lock:
      self.counts["requests_rejected"] += 1
    raise errors.ServingError(
        grpc.StatusCode.PERMISSION_DENIED,
        "this client's queries look like a query-based attack (many near-duplicate images); "
        "its requests are refused. Benign clients: contact the service's operator")

  def _take(self, client, state, sketches, digests):
    """Under the lock: count and remember each image; returns whether the client got flagged."""
    c = self.config
    newly_flagged = False
    resubmitted = near = 0
    for sketch, digest in zip(sketches, digests):
      state.queries += 1
      if state.size and (state.digests[:state.size] == digest).any():
        resubmitted += 1
        continue
      if state.size:
        shared = fingerprints_lib.shared_bits(state.fps[:, :state.size], sketch)
        if np.count_nonzero(shared >= c.match_threshold) >= c.neighbours_to_flag:
          near += 1
          if state.flagged_at is None:
            state.flagged_at = state.queries
            newly_flagged = True
            self.counts["clients_flagged"] += 1
            self._flagged[client] = state.queries
            if len(self._flagged) > MAX_LISTED_FLAGGED:
              self._flagged.popitem(last=False)
      state.remember(sketch, digest, c.history_per_client)
    self.counts["queries"] += len(digests)
    self.counts["exact_resubmissions"] += resubmitted
    self.counts["near_duplicate_queries"] += near
    return newly_flagged

  def _evict(self):
    cap = self.config.max_memory_mb * 1e6
    while self._bytes > cap and len(self._clients) > 1:
      _, oldest = self._clients.popitem(last=False)
      self._bytes -= oldest.nbytes
      self.counts["clients_evicted"] += 1

  def metrics(self):
    """Counts and store size for the monitoring endpoint (a JSON-ready dict)."""
    with self._lock:
      remembered = sum(s.size for s in self._clients.values())
      return {"enabled": True, "action": self.config.action,
              "queries": self.counts["queries"],
              "exact_resubmissions": self.counts["exact_resubmissions"],
              "near_duplicate_queries": self.counts["near_duplicate_queries"],
              "clients_flagged": self.counts["clients_flagged"],
              "requests_rejected": self.counts["requests_rejected"],
              "clients_evicted": self.counts["clients_evicted"],
              "clients_remembered": len(self._clients), "queries_remembered": remembered,
              "store_bytes": self._bytes, "store_cap_bytes": int(self.config.max_memory_mb * 1e6),
              "flagged_at_query": dict(self._flagged)}


def grpc_client_id(context, header):
  """The client a gRPC call speaks for: the `header` metadata value, else the peer's host."""
  for key, value in context.invocation_metadata() or ():
    if key == header and value:
      return f"id:{value}"
  return "peer:" + _host(context.peer() or "unknown")


def rest_client_id(headers, peer, header):
  """The client a REST request speaks for: the `header` value, else the peer's host."""
  value = headers.get(header)
  if value:
    return f"id:{value}"
  return "peer:" + (peer or "unknown")


def _host(peer):
  """'ipv4:127.0.0.1:5555' -> 'ipv4:127.0.0.1' (a client's port changes per connection)."""
  return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer
