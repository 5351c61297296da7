"""The background batch producer: order, errors, stopping, the state that travels with a batch."""

import threading
import time

import jax
import numpy as np
import pytest

from cyb_jax import sharding
from cyb_jax.data import iterators
from cyb_jax.training import prefetch


def _counter():
  calls = []

  def produce():
    calls.append(len(calls))
    return calls[-1]

  return produce, calls


def test_yields_count_items_in_order_then_stops():
  produce, _ = _counter()
  with prefetch.Prefetcher(produce, count=5, depth=2) as items:
    assert list(items) == [0, 1, 2, 3, 4]
    with pytest.raises(StopIteration):
      next(items)


def test_produces_at_most_depth_items_ahead_plus_the_one_in_hand():
  produce, calls = _counter()
  with prefetch.Prefetcher(produce, count=100, depth=2) as items:
    assert next(items) == 0
    time.sleep(0.3)  # time for the thread to fill the queue
    # Consumed 1; queue holds 2; the thread has produced one more it waits to put.
    assert len(calls) == 1 + 2 + 1


def test_an_error_in_the_producer_is_raised_in_the_consumer_after_the_earlier_items():
  state = {"n": 0}

  def produce():
    state["n"] += 1
    if state["n"] == 3:
      raise RuntimeError("disk on fire")
    return state["n"]

  items = prefetch.Prefetcher(produce, count=10, depth=2)
  assert [next(items), next(items)] == [1, 2]
  with pytest.raises(RuntimeError, match="disk on fire"):
    next(items)
  with pytest.raises(StopIteration):
    next(items)
  items.close()


def test_close_stops_a_thread_blocked_on_a_full_queue():
  produce, calls = _counter()
  items = prefetch.Prefetcher(produce, count=1000, depth=1)
  next(items)
  time.sleep(0.2)
  items.close()
  assert not items._thread.is_alive()  # pylint: disable=protected-access
  produced = len(calls)
  time.sleep(0.2)
  assert len(calls) == produced < 1000
  assert all(t.name != "cyb_jax-prefetch" for t in threading.enumerate())


def test_each_batch_carries_the_iterator_state_taken_right_after_it():
  """Restoring the state that came with batch i makes the iterator yield batch i + 1 next."""

  def batch_at(i):
    return {"inputs": np.full((2, 3), i, np.int32), "extra": np.zeros((2,), np.int32)}

  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  iterator = iterators.IndexedIterator(batch_at, {"seed": 0})
  items = prefetch.Prefetcher(prefetch.train_batches(iterator, mesh, ("inputs",)), count=4)
  got = list(items)
  assert [sorted(b) for b, _ in got] == [["inputs"]] * 4  # only the keys asked for
  assert [int(b["inputs"][0, 0]) for b, _ in got] == [0, 1, 2, 3]
  assert [s["batch_index"] for _, s in got] == [1, 2, 3, 4]
  fresh = iterators.IndexedIterator(batch_at, {"seed": 0})
  fresh.set_state(got[1][1])
  np.testing.assert_array_equal(next(fresh)["inputs"], np.asarray(got[2][0]["inputs"]))


@pytest.mark.parametrize("depth, count", [(0, 3), (2, -1)])
def test_bad_depth_or_count_is_a_value_error(depth, count):
  with pytest.raises(ValueError, match=f"depth={depth}, count={count}"):
    prefetch.Prefetcher(lambda: 0, count=count, depth=depth)


def test_pending_steps_reads_every_step_since_the_last_read_in_order_then_forgets_them():
  pending = prefetch.PendingSteps(("a",), max_in_flight=1)
  for step in (1, 2, 3):
    pending.add(step, {"a": jax.numpy.asarray(step * 10), "b": jax.numpy.asarray(0)})
  assert [(s, int(m["a"]), sorted(m)) for s, m in pending.read()] == [(1, 10, ["a"]), (2, 20, ["a"]), (3, 30, ["a"])]
  assert pending.read() == []
