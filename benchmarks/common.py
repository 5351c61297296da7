"""The model that benchmarks/model.py and benchmarks/train_loop.py time, and its ``--quick`` sizes.

Both scripts time the same pause-aware transformer: 6 layers, D 256, 4 heads, SwiGLU 1024,
V 8192 (10.5M parameters), shrunk alike by ``--quick``. Importing this module defines no flags
(each script defines its own at import, so neither can import the other): a script calls
:func:`define_model_flags` once at import (then ``flags.adopt_module_key_flags(common)``, so
that its ``--help`` lists them), reads the model with :func:`model_fields` and applies
``--quick`` with :func:`set_quick_sizes`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from absl import flags

# Flag name -> field of cyb_jax.model.ModelConfig (and of a run config's ``model``).
FIELDS: Mapping[str, str] = {
  "vocab": "vocab_size",
  "d_model": "d_model",
  "layers": "num_layers",
  "heads": "num_heads",
  "mlp_dim": "mlp_dim",
  "unroll_pause_scan": "unroll_pause_scan",
  "scan_layers": "scan_layers",
}

# ``--quick`` values of the model flags; each script adds the sizes of its own tables.
QUICK_SIZES: Mapping[str, Any] = dict(vocab=512, d_model=64, layers=2, heads=2, mlp_dim=128)


def define_model_flags() -> None:
  """Defines the flags of :data:`FIELDS`, by default the 10.5M-parameter model."""
  flags.DEFINE_integer("vocab", 8192, "V (model.vocab_size), the vocabulary without DK.")
  flags.DEFINE_integer("d_model", 256, "D.")
  flags.DEFINE_integer("layers", 6, "Transformer blocks.")
  flags.DEFINE_integer("heads", 4, "Query heads (head dimension D / heads).")
  flags.DEFINE_integer("mlp_dim", 1024, "SwiGLU width.")
  flags.DEFINE_bool("unroll_pause_scan", False, "model.unroll_pause_scan of every model.")
  flags.DEFINE_bool("scan_layers", None, "model.scan_layers of every model (unset: the model config's default).")


def model_fields() -> dict[str, Any]:
  """The model flags' parsed values as ModelConfig fields (``vocab_size``, ``num_layers``, ...);
  a flag left None (``--scan_layers``) is left out, so the config's default holds."""
  fields = {field: flags.FLAGS[name].value for name, field in FIELDS.items()}
  return {field: value for field, value in fields.items() if value is not None}


def set_quick_sizes(sizes: Mapping[str, Any]) -> None:
  """``--quick``: sets the model flags to :data:`QUICK_SIZES` and the script's own flags to ``sizes``."""
  for name, value in {**QUICK_SIZES, **sizes}.items():
    flags.FLAGS[name].value = value


def finish_record(record: dict[str, Any], out: str | None) -> None:
  """Records the load average at the end, prints it, and writes ``record`` as JSON to ``out`` if set."""
  record["load_end"] = os.getloadavg()
  print("load average at end: " + " ".join(f"{x:.2f}" for x in record["load_end"]))
  if out:
    with open(out, "w") as f:
      json.dump(record, f, indent=1)
