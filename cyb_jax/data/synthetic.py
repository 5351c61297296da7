"""The embedded synthetic task: a character-level stream of arithmetic problems.

A row of the stream reads, for example (max_digits=3; answers least significant digit first)

    ;871*65=51665;13+44=75;75+997=2701;5*68=043;______

Every problem is `A op B = R ;` with A and B drawn uniformly among the numbers with
`min_digits..max_digits` digits (the digit count itself uniform, 1-digit numbers include
0), op = `*` with probability `mul_fraction` and `+` otherwise, and R = A op B written
least significant digit first. Rows start with `;`, hold only whole problems and are
padded after the last problem that fits (N + 1 tokens, see packing.py); each row is one
segment.

Why this task. Operand digits are uniform noise: no computation predicts them better than
their marginal (about log 10 nats), so pausing there cannot help. Answer digits are
deterministic, and the computation each needs can be stated in advance. Writing R from its
least significant digit makes every addition digit LOCAL: a_k + b_k plus a carry that the
previous answer digit together with a_{k-1}, b_{k-1} determines. A product digit of a
column that sums two or more partial products a_i*b_j (i + j = k) needs that sum plus a
carry which can exceed 9, so the previous answer digit does not determine it: it needs the
whole lower part of the multiplication. In between, a product by a one-digit number d has
one partial product per column and a carry of at most 8, which the previous answer digit
fixes only after undoing a multiplication (d*a_{k-1} + c = s_{k-1} mod 10): several
lookups in sequence.

Every target token carries a fine *category* (CATEGORY_NAMES, what the token is) and an
ordinal *difficulty level* (DIFFICULTY_NAMES, how much computation predicting it needs; a
model should pause more on higher levels, and not on level 0):

  0 "noise":         operand digits, the operator and "=": drawn at random (the operator
                     and "=" become predictable only after a max_digits-digit operand).
  1 "lookup":        one table lookup or copy: the first product digit a_0*b_0 mod 10, an
                     addition digit copied from the longer operand (no carry in), the
                     carry-out digit "1" of an addition, and the ";" closing an answer.
  2 "local":         a few digits combined: addition digits of two operand digits and/or a
                     carry, and the leading digit of a product (set by the leading operand
                     digits except near a boundary).
  3 "carry_chain":   inner digits of a product by a one-digit number.
  4 "multi_product": inner digits of a product of two multi-digit numbers.

The order is also what small models show, and the default task (max_digits=2) leaves
room for extra computation to help. Per-level NLL in nats (range over the level's
categories) of plain transformers without pauses (d_model 64, 4 heads, batches of
32 x 128 tokens, the eval rows); the 1 -> 2 layer gain stands in for the gain from compute:

  level            max_digits=2          max_digits=2          max_digits=3
                   1 layer, 2000 steps   2 layers, 2000 steps  2 layers, 2500 steps
  0 noise          0.33 - 2.51           0.34 - 2.51           0.59 - 2.52   (random draws)
  1 lookup         0.000 - 0.041         0.000 - 0.003         0.000 - 0.005
  2 local          0.02 - 0.75           0.004 - 0.11          0.17 - 0.39
  3 carry_chain    1.80                  1.07                  1.59
  4 multi_product  2.16                  2.17                  2.24          (chance 2.30)

Tokens that are never targets (the row's leading ";", padding) get difficulty -1.

Vocabulary (V = 15): 0 = padding, 1..10 = digits "0".."9", 11 = "+", 12 = "*", 13 = "=",
14 = ";". There is no BOS: the leading ";" plays its part.

Determinism: global row g (row r of global batch i is g = i * batch_size + r) is drawn
from keyed_rng(SYNTHETIC_TRAIN, seed, g); eval rows from keyed_rng(SYNTHETIC_EVAL, 0, g),
independent of the seed. Every row is a pure function of its key, so a process computes
exactly its own rows, and any batch can be regenerated directly.
"""

from __future__ import annotations

import numpy as np

from cyb_jax.data import packing
from cyb_jax.data import seeding

PAD_ID = 0
DIGIT0_ID = 1
PLUS_ID = 11
TIMES_ID = 12
EQUALS_ID = 13
SEP_ID = 14
VOCAB_SIZE = 15
_CHARS = ("", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "+", "*", "=", ";")

CATEGORY_NAMES = (
  "operand",  # 0  an operand digit
  "operator",  # 1  "+" or "*"
  "equals",  # 2  "="
  "add_copy",  # 3  addition digit: one operand digit, no carry in (a copy)
  "add_digits",  # 4  addition digit: two operand digits, no carry in
  "add_carry",  # 5  addition digit with a carry in (one or two operand digits)
  "add_final",  # 6  the carry-out digit "1" of an addition
  "add_end",  # 7  ";" after an addition
  "mul_first",  # 8  least significant product digit, a_0*b_0 mod 10
  "mul_by_digit",  # 9  an inner digit of a product by a 1-digit number
  "mul_column",  # 10 an inner digit of a product of two multi-digit numbers
  "mul_last",  # 11 most significant product digit (when the product has 2+ digits)
  "mul_end",  # 12 ";" after a product
)
DIFFICULTY_NAMES = ("noise", "lookup", "local", "carry_chain", "multi_product")
_LEVEL = {
  "operand": 0,
  "operator": 0,
  "equals": 0,
  "add_copy": 1,
  "add_final": 1,
  "add_end": 1,
  "mul_first": 1,
  "mul_end": 1,
  "add_digits": 2,
  "add_carry": 2,
  "mul_last": 2,
  "mul_by_digit": 3,
  "mul_column": 4,
}
LEVEL_OF_CATEGORY = np.array([_LEVEL[name] for name in CATEGORY_NAMES], dtype=np.int32)
_CATEGORY = {name: i for i, name in enumerate(CATEGORY_NAMES)}
_POW10 = 10 ** np.arange(19, dtype=np.int64)


def max_problem_len(max_digits: int) -> int:
  """Most tokens one problem takes: A op B = R ; with R up to 2*max_digits digits."""
  return 4 * max_digits + 3


def _num_digits(x_M: np.ndarray) -> np.ndarray:
  """Decimal digit count of non-negative int64 values (0 has one digit)."""
  return 1 + (x_M[:, None] >= _POW10[None, 1:]).sum(axis=1)


def _digit(x: np.ndarray, k: np.ndarray) -> np.ndarray:
  """Digit k (0 = least significant) of x; k is clipped into [0, 18]."""
  return (x // _POW10[np.clip(k, 0, 18)]) % 10


def draw_problems(
  rng: np.random.Generator, num: int, *, min_digits: int, max_digits: int, mul_fraction: float
) -> dict[str, np.ndarray]:
  """Draws `num` problems; returns int64 arrays a, b, result, la, lb, lr and bool is_mul, all [num]."""
  la_M = rng.integers(min_digits, max_digits + 1, num)
  lb_M = rng.integers(min_digits, max_digits + 1, num)

  def operand(l_M):
    low_M = np.where(l_M == 1, 0, _POW10[l_M - 1])
    return rng.integers(low_M, _POW10[l_M])

  a_M, b_M = operand(la_M), operand(lb_M)
  is_mul_M = rng.random(num) < mul_fraction
  r_M = np.where(is_mul_M, a_M * b_M, a_M + b_M)
  return {"a": a_M, "b": b_M, "result": r_M, "la": la_M, "lb": lb_M, "lr": _num_digits(r_M), "is_mul": is_mul_M}


def encode_problems(p: dict[str, np.ndarray], max_digits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Lays problems out as tokens with their categories.

  Args:
    p: problems from `draw_problems`.
    max_digits: the largest operand digit count (sets the padded width W).

  Returns:
    tokens_MxW int32, category_MxW int32 (-1 beyond the problem), length_M int64, where
    W = max_problem_len(max_digits) and problem m occupies columns [0, length_M[m]).
  """
  a, b, r = p["a"][:, None], p["b"][:, None], p["result"][:, None]
  la, lb, lr = p["la"][:, None], p["lb"][:, None], p["lr"][:, None]
  is_mul = p["is_mul"][:, None]
  width = max_problem_len(max_digits)
  j = np.arange(width)[None, :]
  eq_col = la + lb + 1
  k = j - eq_col - 1  # answer digit index (least significant first)

  in_a, at_op = j < la, j == la
  in_b = (j > la) & (j < eq_col)
  at_eq = j == eq_col
  in_r = (k >= 0) & (k < lr)
  at_end = k == lr

  tokens = np.select(
    [in_a, at_op, in_b, at_eq, in_r, at_end],
    [
      DIGIT0_ID + _digit(a, la - 1 - j),
      np.where(is_mul, TIMES_ID, PLUS_ID),
      DIGIT0_ID + _digit(b, eq_col - 1 - j),
      EQUALS_ID,
      DIGIT0_ID + _digit(r, k),
      SEP_ID,
    ],
    PAD_ID,
  )

  c = _CATEGORY
  # Addition: operand digits present in column k, and the carry into column k.
  n_add = (k < la).astype(np.int64) + (k < lb)
  low = _POW10[np.clip(k, 0, 18)]
  carry_in = (a % low + b % low) >= low
  add_cat = np.select(
    [n_add == 0, carry_in, n_add == 2], [c["add_final"], c["add_carry"], c["add_digits"]], c["add_copy"]
  )
  # Multiplication: first, last, inner digit of a product by a 1-digit number, or of a wider product.
  by_digit = (la == 1) | (lb == 1)
  mul_cat = np.select(
    [k == 0, k == lr - 1, by_digit], [c["mul_first"], c["mul_last"], c["mul_by_digit"]], c["mul_column"]
  )

  category = np.select(
    [in_a | in_b, at_op, at_eq, in_r & ~is_mul, in_r & is_mul, at_end & ~is_mul, at_end & is_mul],
    [c["operand"], c["operator"], c["equals"], add_cat, mul_cat, c["add_end"], c["mul_end"]],
    -1,
  )
  length = (la + lb + lr + 3)[:, 0]
  return tokens.astype(np.int32), category.astype(np.int32), length


def problems_per_row(seq_len: int) -> int:
  """Problems drawn per row: a problem takes at least 6 tokens, so this many overfill it."""
  return seq_len // 6 + 1


def layout_rows(
  tok_RxMxP: np.ndarray, cat_RxMxP: np.ndarray, len_RxM: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
  """Row windows: ";" then each row's problems, in order, while they fit in seq_len + 1 tokens.

  Args:
    tok_RxMxP, cat_RxMxP: tokens and categories of M encoded problems per row.
    len_RxM: their lengths.
    seq_len: N; windows have N + 1 tokens.

  Returns:
    tokens_RxW int32 (PAD_ID after the last problem that fits) and category_RxW int32
    (-1 for the leading ";" and padding).
  """
  num_rows, _, width_p = tok_RxMxP.shape
  width = seq_len + 1
  fits_RxM = 1 + np.cumsum(len_RxM, axis=1) <= width
  keep_RxMxP = fits_RxM[:, :, None] & (np.arange(width_p) < len_RxM[:, :, None])
  keep_RxF = keep_RxMxP.reshape(num_rows, -1)
  column_RxF = np.cumsum(keep_RxF, axis=1)  # 1 + index after the leading ";"
  row_F, col_F = np.nonzero(keep_RxF)
  tokens_RxW = np.full((num_rows, width), PAD_ID, np.int32)
  category_RxW = np.full((num_rows, width), -1, np.int32)
  tokens_RxW[:, 0] = SEP_ID
  tokens_RxW[row_F, column_RxF[row_F, col_F]] = tok_RxMxP.reshape(num_rows, -1)[row_F, col_F]
  category_RxW[row_F, column_RxF[row_F, col_F]] = cat_RxMxP.reshape(num_rows, -1)[row_F, col_F]
  return tokens_RxW, category_RxW


def _row_windows(
  stream: int, keys: tuple[int, ...], rows: range, seq_len: int, min_digits: int, max_digits: int, mul_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
  """tokens_RxW and category_RxW of rows `rows`, row r drawn from keyed_rng(stream, *keys, r)."""
  num = problems_per_row(seq_len)
  drawn = [
    draw_problems(
      seeding.keyed_rng(stream, *keys, r), num, min_digits=min_digits, max_digits=max_digits, mul_fraction=mul_fraction
    )
    for r in rows
  ]
  problems = {k: np.concatenate([d[k] for d in drawn]) for k in drawn[0]}
  tok, cat, length = encode_problems(problems, max_digits)
  shape = (len(rows), num)
  return layout_rows(tok.reshape(*shape, -1), cat.reshape(*shape, -1), length.reshape(shape), seq_len)


def synthetic_batch(
  *,
  stream: int,
  keys: tuple[int, ...],
  rows: range,
  seq_len: int,
  min_digits: int,
  max_digits: int,
  mul_fraction: float,
) -> packing.Batch:
  """Rows `rows` of the batch keyed by `keys` in `stream` (see seeding.py).

  Row r is drawn from keyed_rng(stream, *keys, r), so any subset of rows of any batch is
  computed directly and identically on every process.

  Returns:
    The packing.pack_windows arrays [len(rows), seq_len] plus `difficulty` int32: the
    level (LEVEL_OF_CATEGORY) of the TARGET token, -1 where the weight is 0.
  """
  tokens_RxW, category_RxW = _row_windows(stream, keys, rows, seq_len, min_digits, max_digits, mul_fraction)
  doc_RxW = np.where(tokens_RxW == PAD_ID, packing.PAD_DOC, 0)
  batch = packing.pack_windows(tokens_RxW, doc_RxW, PAD_ID)
  level_RxN = LEVEL_OF_CATEGORY[np.maximum(category_RxW[:, 1:], 0)]
  batch["difficulty"] = np.where(batch["weights"] > 0, level_RxN, -1).astype(np.int32)
  return batch


def target_categories(
  *,
  stream: int,
  keys: tuple[int, ...],
  rows: range,
  seq_len: int,
  min_digits: int,
  max_digits: int,
  mul_fraction: float,
) -> np.ndarray:
  """The CATEGORY_NAMES index of every target of `synthetic_batch` (same arguments), -1 where weight 0."""
  tokens_RxW, category_RxW = _row_windows(stream, keys, rows, seq_len, min_digits, max_digits, mul_fraction)
  return np.where(tokens_RxW[:, 1:] == PAD_ID, -1, category_RxW[:, 1:]).astype(np.int32)


def decode(ids) -> str:
  """Ids to text; padding is dropped."""
  return "".join(_CHARS[int(i)] for i in ids if 0 <= int(i) < VOCAB_SIZE)


def encode(text: str) -> np.ndarray:
  """Text (digits, "+", "*", "=", ";") to int32 ids; raises ValueError naming a character outside the vocabulary."""
  try:
    return np.array([_CHARS.index(ch) for ch in text], np.int32)
  except ValueError:
    bad = next(ch for ch in text if ch not in _CHARS)
    raise ValueError(f"Character {bad!r} is not in the synthetic vocabulary {''.join(_CHARS)!r}.") from None


def piece(token_id: int) -> str:
  """A printable string for one id ("<pad>" for padding)."""
  token_id = int(token_id)
  if not 0 <= token_id < VOCAB_SIZE:
    raise ValueError(f"Token id {token_id} is outside the synthetic vocabulary [0, {VOCAB_SIZE}).")
  return _CHARS[token_id] or "<pad>"
