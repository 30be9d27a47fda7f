"""Stateful detection of query-based attacks in the server (Blacklight's idea, our code).

An attacker who holds only the endpoint sends hundreds of images that differ by a perturbation
smaller than the model's eps; benign clients rarely send more than a few copies of one image (a
retry, a re-encoded or slightly shifted copy). Per client, the detector remembers the fingerprint
(`serving.fingerprints`) of each recent query and, for each new image, counts the remembered
queries it shares at least `match_threshold` hashes with: `neighbours_to_flag` such near-duplicates
flag the client. Exact byte-for-byte resubmissions are answered and not counted (a retry tells an
attacker nothing new). Flagged clients are logged and counted, and with a rejecting action every
later request of theirs gets PERMISSION_DENIED (HTTP 403).

The store is bounded: `history_per_client` fingerprints per client in a ring, and the whole store
under `max_memory_mb`, dropping the least recently seen clients first. Only the servable's request
path calls `check`, and only when detection is on: off, it costs one `is None` test per request.
"""
import collections
import hashlib
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
  """One client's remembered queries: fingerprints and exact digests in a growing ring."""
  __slots__ = ("fps", "digests", "size", "next", "queries", "flagged_at")

  def __init__(self, top_k):
    self.fps = np.zeros((_FIRST_ROWS, top_k), np.uint32)
    self.digests = np.zeros(_FIRST_ROWS, np.uint32)
    self.size = self.next = self.queries = 0
    self.flagged_at = None  # The query (1-based) that flagged the client.

  @property
  def nbytes(self):
    return self.fps.nbytes + self.digests.nbytes + CLIENT_OVERHEAD_BYTES

  def remember(self, fingerprint, digest, capacity):
    if self.size == len(self.fps) and len(self.fps) < capacity:  # Grow until the capacity.
      rows = min(capacity, len(self.fps) + max(_FIRST_ROWS, len(self.fps) // _GROWTH))
      self.fps = np.concatenate([self.fps, np.zeros((rows - len(self.fps), self.fps.shape[1]),
                                                    np.uint32)])
      self.digests = np.concatenate([self.digests, np.zeros(rows - len(self.digests), np.uint32)])
    self.fps[self.next] = fingerprint
    self.digests[self.next] = digest
    self.next = (self.next + 1) % len(self.fps)
    self.size = min(self.size + 1, len(self.fps))


def _digest(image):
  """32 bits of the exact bytes: a collision only makes one near-duplicate pass as a retry."""
  return np.uint32(int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=4).digest(), "little"))


class QueryDetector:
  """Per-client near-duplicate counting over a bounded store; thread-safe."""

  def __init__(self, config):
    self.config = config
    self._clients = collections.OrderedDict()  # client -> _Client, least recently seen first
    self._flagged = collections.OrderedDict()  # client -> query that flagged it (listed only)
    self._lock = threading.Lock()
    self._bytes = 0
    self.counts = collections.Counter()

  def check(self, client, images):
    """Fingerprint the request's images for `client`; raises PERMISSION_DENIED when the client is
    (or becomes) flagged and the action rejects."""
    c = self.config
    images = np.asarray(images)
    fps = fingerprints_lib.fingerprints(images, c.quantization_step, c.window_size,
                                        c.hashes_per_query)
    digests = [_digest(image) for image in images]
    with self._lock:
      state = self._clients.pop(client, None)
      if state is None:
        state = _Client(c.hashes_per_query)
      else:
        self._bytes -= state.nbytes
      self._clients[client] = state
      newly_flagged = self._take(client, state, fps, digests)
      self._bytes += state.nbytes
      self._evict()
      flagged = state.flagged_at is not None
      if flagged and c.rejects:
        self.counts["requests_rejected"] += 1
    if newly_flagged and c.action != "reject":
      log.warning("query detection: client %s flagged at its query %d (%d near-duplicate "
                  "earlier queries)", client, state.flagged_at, c.neighbours_to_flag)
    if flagged and c.rejects:
      raise errors.ServingError(
          grpc.StatusCode.PERMISSION_DENIED,
          "this client's queries look like a query-based attack (many near-duplicate images); "
          "its requests are refused. Benign clients: contact the service's operator")

  def _take(self, client, state, fps, digests):
    """Under the lock: count and remember each image; returns whether the client got flagged."""
    c = self.config
    newly_flagged = False
    for fingerprint, digest in zip(fps, digests):
      state.queries += 1
      self.counts["queries"] += 1
      if state.size and np.any(state.digests[:state.size] == digest):
        self.counts["exact_resubmissions"] += 1
        continue
      shared = fingerprints_lib.shared_counts(state.fps[:state.size], fingerprint)
      if np.count_nonzero(shared >= c.match_threshold) >= c.neighbours_to_flag:
        self.counts["near_duplicate_queries"] += 1
        if state.flagged_at is None:
          state.flagged_at = state.queries
          newly_flagged = True
          self.counts["clients_flagged"] += 1
          self._flagged[client] = state.queries
          if len(self._flagged) > MAX_LISTED_FLAGGED:
            self._flagged.popitem(last=False)
      state.remember(fingerprint, digest, c.history_per_client)
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
