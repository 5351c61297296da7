"""Checkpoints: orbax ``CheckpointManager`` over the train state, data position and run facts.

A checkpoint of step ``s`` in ``<workdir>/checkpoints/s`` holds three items:

* ``state``: the :class:`~cyb_jax.training.train.TrainState` pytree (model, optimiser,
  CYB-DP multiplier, step), saved and restored sharded;
* ``data``: the training iterator's position (JSON), so a resumed run sees exactly
  the batches an uninterrupted run would have seen;
* ``meta``: JSON facts used to refuse an incompatible resume (model shape,
  vocabulary, loss) and the count of training tokens seen.

Orbax writes each checkpoint to a temporary folder and renames it when complete,
so an interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from cyb_jax import files
from cyb_jax import model as model_lib

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


class IncompatibleCheckpointError(ValueError):
  """Resuming or fine-tuning from a checkpoint whose model does not fit the config."""


def checkpoint_dir(workdir: str) -> epath.Path:
  """``<workdir>/checkpoints`` (local or ``gs://``)."""
  return files.resolve(workdir) / CHECKPOINT_DIR


class Checkpointer:
  """Saves and restores a run's checkpoints in ``<workdir>/checkpoints``."""

  def __init__(self, workdir: str, *, keep: int, enable_async: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=enable_async)
    self._manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
    """Starts saving (asynchronously); :meth:`wait` blocks until it is on disk."""
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)
      ),
      force=True,
    )

  def restore_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """Restores ``(state, data_state, meta)``; ``abstract_state`` carries target shardings.

    The state is placed by ``abstract_state``'s shardings, which may describe a
    different mesh than the one the checkpoint was saved from.
    """
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()
      ),
    )
    return restored["state"], restored["data"], restored["meta"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _plain(value: Any) -> Any:
  """A ModelConfig value as JSON stores it (tuples as lists), for comparisons."""
  return list(map(_plain, value)) if isinstance(value, (list, tuple)) else value


def check_compatible(saved_meta: dict, meta: dict, *, what: str) -> None:
  """Raises :class:`IncompatibleCheckpointError` naming every model field that differs.

  Compares the fields of :class:`~cyb_jax.model.ModelConfig` that define the
  model's function (not ``model.RUNTIME_FIELDS``, such as the remat policy). A
  field that one side lacks (a checkpoint written before the field existed)
  counts as its default. ``what`` says which checkpoint is meant, for the message.
  """
  defaults = {
    f.name: f.default for f in dataclasses.fields(model_lib.ModelConfig) if f.default is not dataclasses.MISSING
  }
  diffs = []
  saved_model, model = saved_meta.get("model", {}), meta.get("model", {})
  for key in sorted(set(saved_model) | set(model)):
    if key in model_lib.RUNTIME_FIELDS:
      continue
    saved_value, value = (_plain(m.get(key, defaults.get(key))) for m in (saved_model, model))
    if saved_value != value:
      diffs.append(f"model.{key}: checkpoint {saved_value!r} vs config {value!r}")
  if diffs:
    raise IncompatibleCheckpointError(f"{what} does not fit this config:\n  " + "\n  ".join(diffs))


def restore_params_for_init(init_from: str) -> tuple[Any, dict]:
  """Parameters and meta of the newest checkpoint of another run (for ``init_from``).

  ``init_from`` is a run's workdir or its ``checkpoints`` folder. The parameters
  come back as host arrays with the structure they were saved with.
  """
  path = files.resolve(init_from)
  if (path / CHECKPOINT_DIR).is_dir():
    path = path / CHECKPOINT_DIR
  if not path.is_dir():
    raise FileNotFoundError(f"init_from={init_from!r}: no such run folder.")
  manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"init_from={init_from!r}: no checkpoint in {path}.")
  restored = manager.restore(
    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
  )
  manager.close()
  return restored["state"]["params"], restored["meta"]


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the resolved config to ``<workdir>/config.json``."""
  files.write_text(files.resolve(workdir) / CONFIG_FILE, config.to_json_best_effort(indent=2, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = files.resolve(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist: {workdir!r} is not a cyb_jax run folder.")
  return ml_collections.ConfigDict(files.read_json(path))


def restore_params(workdir: str, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
  """The parameters of a run's checkpoint ``step`` (the newest by default), and the step.

  ``abstract_params`` gives the structure and dtypes (e.g. ``jax.eval_shape`` of the
  model's init); the values come back as host-local arrays of those dtypes.
  """
  manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=ocp.CheckpointManagerOptions(create=False))
  step = manager.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}.")
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  manager.close()
  params = jax.tree.map(lambda ref, x: jax.numpy.asarray(x, ref.dtype), abstract_params, restored["state"]["params"])
  return params, int(step)
