"""Pause-marked samples (``launch/generate.py``): decode from a prompt and show each pause inline."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from cyb_jax.model import ModelConfig
from cyb_jax.model import decode

PAUSE_MARK = "·"  # one per pause in rendered samples


def render_with_pauses(pieces: Sequence[str], pauses: Sequence[int], *, mark: str = PAUSE_MARK) -> str:
  """Text with ``mark`` repeated once per pause, placed where the pause happened.

  ``pauses[t]`` pauses were taken before emitting ``pieces[t]``, i.e. right after reading the
  previous token: ``render_with_pauses(["4", "6", ";"], [2, 0, 1]) == "··46·;"``. SentencePiece
  word starts ("▁") become spaces.
  """
  if len(pieces) != len(pauses):
    raise ValueError(f"{len(pieces)} pieces but {len(pauses)} pause counts.")
  return "".join(mark * int(p) + s.replace("▁", " ") for s, p in zip(pieces, pauses))


def sample_with_pauses(
  model_cfg: ModelConfig,
  params,
  info,
  prompt: str,
  *,
  num_samples: int = 1,
  max_new_tokens: int = 64,
  halting: str = "threshold",
  threshold: float = 0.5,
  temperature: float = 0.0,
  seed: int = 0,
  mark: str = PAUSE_MARK,
) -> str:
  """Decodes ``num_samples`` continuations of ``prompt`` and renders them with pauses inline.

  Uses :func:`cyb_jax.model.decode.generate` (one jitted program). Each sample is shown as
  ``[prompt]`` followed by the generated text, ``mark`` once per pause before the token it
  preceded, cut after the first end-of-document token; then its pause counts.

  Returns:
    The text to print.
  """
  prompt_P = np.asarray(info.encode(prompt), np.int32).reshape(-1)
  if prompt_P.size == 0:
    raise ValueError(f"prompt={prompt!r} encodes to no tokens; give a prompt (e.g. ';12+34=' for the synthetic task).")
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"num_samples={num_samples!r} must be an int >= 1.")
  prompt_BxP = np.tile(prompt_P[None], (num_samples, 1))
  tokens_BxT, pauses_BxT = jax.device_get(
    decode.generate(
      model_cfg,
      params,
      prompt_BxP,
      jax.random.key(seed),
      max_new_tokens=max_new_tokens,
      halting=halting,
      threshold=threshold,
      temperature=temperature,
    )
  )
  out = [
    f"halting={halting} threshold={threshold:g} temperature={temperature:g} K={model_cfg.max_pauses} "
    f"({mark} = one pause)"
  ]
  for b in range(num_samples):
    tokens_T, pauses_T = list(tokens_BxT[b]), list(pauses_BxT[b])
    if info.eos_id is not None and info.eos_id in tokens_T:
      cut = tokens_T.index(info.eos_id) + 1
      tokens_T, pauses_T = tokens_T[:cut], pauses_T[:cut]
    text = render_with_pauses([info.piece(int(t)) for t in tokens_T], pauses_T, mark=mark)
    hist = np.bincount(np.asarray(pauses_T, np.int64), minlength=model_cfg.num_steps)
    counts = ", ".join(f"{k}: {n}" for k, n in enumerate(hist))
    out += [
      "",
      f"--- sample {b + 1}: {int(np.sum(pauses_T))} pauses over {len(tokens_T)} tokens "
      f"({np.mean(pauses_T):.2f} per token; tokens by pauses taken: {counts})",
      f"[{prompt}]{text}",
    ]
  return "\n".join(out)
