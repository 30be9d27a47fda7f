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
under `max_memory_mb`, dropping the least recently seen clients first. The server runs this judge
in a process of its own (`serving.detection_worker`); only when detection is on does the request
path call anything: off, it costs one `is None` test per request.
"""
import collections
import logging
import threading

import grpc
import numpy as np

from serving import errors
from serving import fingerprints as fingerprints_lib

log = logging.getLogger(__name__)

CLIENT_OVERHEAD_BYTES = 512  # Python objects, array headers and the LRU entry of one client.
MAX_LISTED_FLAGGED = 1000  # Flagged clients listed by the monitoring endpoint (most recent).
_FIRST_ROWS = 16
_GROWTH = 8  # A full ring grows by 1/8 (at least _FIRST_ROWS rows): little memory left unused.


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
      self.next = held  # The full ring was in order: the new rows come next, nothing is overwritten.
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

  `check` judges a request's images before it returns. The server does not call it on its request
  path: `serving.detection_worker` runs this class in a process of its own and feeds it in batches
  (`judge`), which keeps its numpy work off the server's GIL.
  """

  def __init__(self, config):
    self.config = config
    self._clients = collections.OrderedDict()  # client -> _Client, least recently seen first
    self._flagged = collections.OrderedDict()  # client -> query that flagged it (listed only)
    self._lock = threading.Lock()
    self._bytes = 0
    self.counts = collections.Counter()
    self.forgotten_flagged = []  # Flagged clients the store dropped since the owner last looked.

  def check(self, client, images):
    """Raises PERMISSION_DENIED when `client` is flagged and the action rejects; otherwise judges
    the request's images for `client` (and refuses them if they flag it)."""
    known = self._clients.get(client)  # A lock-free peek: a refused client costs no fingerprint.
    if self.config.rejects and known is not None and known.flagged_at is not None:
      self._refuse()
    if self._record(client, *self.fingerprint(images)) is not None and self.config.rejects:
      self._refuse()

  def judge(self, requests):
    """Judges [(client, images)] in order, fingerprinting them in one numpy pass per image shape
    and dtype; returns {client: query that flagged it} for the clients flagged after them."""
    flagged = {}
    for client, sketches, digests in self._fingerprint_requests(requests):
      at = self._record(client, sketches, digests)
      if at is not None:
        flagged[client] = at
    return flagged

  def _fingerprint_requests(self, requests):
    """[(client, sketches, digests)] of `requests`, in order (digests of the bytes sent)."""
    shapes = collections.defaultdict(list)
    for k, (_, images) in enumerate(requests):
      shapes[images.shape[1:], images.dtype].append(k)
    out = [None] * len(requests)
    for members in shapes.values():
      sketches, digests = self.fingerprint(np.concatenate([requests[k][1] for k in members]))
      start = 0
      for k in members:
        n = len(requests[k][1])
        out[k] = (requests[k][0], sketches[start:start + n], digests[start:start + n])
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
    """Counts and remembers `client`'s fingerprinted images in order; returns the query that
    flagged it, or None."""
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
    return state.flagged_at

  def _refuse(self):
    with self._lock:
      self.counts["requests_rejected"] += 1
    raise refusal()

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
      client, oldest = self._clients.popitem(last=False)
      self._bytes -= oldest.nbytes
      if oldest.flagged_at is not None:
        self.forgotten_flagged.append(client)
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


def refusal():
  """The error a flagged client's requests get."""
  return errors.ServingError(
      grpc.StatusCode.PERMISSION_DENIED,
      "this client's queries look like a query-based attack (many near-duplicate images); "
      "its requests are refused. Benign clients: contact the service's operator")


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
