"""The embedded synthetic task: a character-level stream of arithmetic problems.

A row of the stream reads, for example (answers least significant digit first)

    ;871*65=51665;13+44=75;75+997=2701;5*68=043;______

Every problem is `A op B = R ;` with A and B drawn uniformly among the numbers with
`min_digits..max_digits` digits (the digit count itself uniform, 1-digit numbers include
0), op = `*` with probability `mul_fraction` and `+` otherwise, and R = A op B written
least significant digit first. Rows start with `;`, hold only whole problems and are
padded after the last problem that fits (N + 1 tokens, see packing.py); each row is one
segment.

Why this task. Operand digits are uniform noise: no amount of computation predicts them
better than their marginal (about log 10 nats). Answer digits are deterministic, and the
computation they need differs in a way one can state in advance: writing R from its least
significant digit lets every addition digit be a LOCAL function (a_k, b_k and the carry,
which the previous answer digit together with a_{k-1}, b_{k-1} determines), while a
product digit in a column with two or more partial products a_i*b_j (i + j = k) needs
the sum of those products plus a carry that can exceed 9 and so is not recoverable from
the previous answer digit: it needs the whole lower part of the multiplication. The
first product digit (a_0*b_0 mod 10) is a single lookup; the last one is the leading digit
of the product, which the leading operand digits determine except near a boundary.

Every target token carries a fine *category* (what the token is) and an ordinal
*difficulty level* (how much computation predicting it needs; a model should pause more
on higher levels, and not at all on level 0, where pausing cannot help):

  level 0 "noise":      operand digits, the operator, "=" (drawn at random; the operator
                        and "=" are predictable only once an operand has max_digits digits).
  level 1 "copy":       addition digits where only the longer operand has a digit and no
                        carry comes in: a copy of that digit.
  level 2 "add":        other addition digits (two operand digits and/or a carry, and the
                        final carry digit "1"), and the ";" closing an addition (the
                        decision whether a carry digit follows).
  level 3 "mul_end":    the first and the last digit of a product, every digit of a
                        product by a 1-digit number (one partial product plus a carry of at
                        most 8, which the previous answer digit determines), and the ";"
                        closing a product (whether the product has la+lb or la+lb-1 digits).
  level 4 "mul_middle": the other product digits (2 or more partial products plus a carry).

Tokens that are never targets (the row's leading ";", padding) get difficulty -1.

Vocabulary (V = 15): 0 = padding, 1..10 = digits "0".."9", 11 = "+", 12 = "*", 13 = "=",
14 = ";". There is no BOS: the leading ";" plays its part.

Determinism: row r of global batch i is drawn from keyed_rng(stream, seed, i, r) (eval
rows from a seed-independent stream), so every row is a pure function of its key and a
process computes exactly its own rows.
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
    "operand",      # 0  an operand digit
    "operator",     # 1  "+" or "*"
    "equals",       # 2  "="
    "add_copy",     # 3  addition digit: one operand digit, no carry in
    "add_digits",   # 4  addition digit: two operand digits, no carry in
    "add_carry",    # 5  addition digit with a carry in (one or two operand digits)
    "add_final",    # 6  the carry-out digit "1" of an addition
    "add_end",      # 7  ";" after an addition
    "mul_first",    # 8  least significant product digit, a_0*b_0 mod 10
    "mul_single",   # 9  a non-first, non-last digit of a product by a 1-digit number
    "mul_middle",   # 10 a non-first, non-last digit of a product of two multi-digit numbers
    "mul_last",     # 11 most significant product digit (when the product has 2+ digits)
    "mul_end",      # 12 ";" after a product
)
DIFFICULTY_NAMES = ("noise", "copy", "add", "mul_end", "mul_middle")
LEVEL_OF_CATEGORY = np.array([0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 4, 3, 3], dtype=np.int32)
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


def draw_problems(rng: np.random.Generator, num: int, *, min_digits: int, max_digits: int,
                  mul_fraction: float) -> dict[str, np.ndarray]:
  """Draws `num` problems; returns int64 arrays a, b, result, la, lb, lr and bool is_mul, all [num]."""
  la_M = rng.integers(min_digits, max_digits + 1, num)
  lb_M = rng.integers(min_digits, max_digits + 1, num)

  def operand(l_M):
    low_M = np.where(l_M == 1, 0, _POW10[l_M - 1])
    return rng.integers(low_M, _POW10[l_M])

  a_M, b_M = operand(la_M), operand(lb_M)
  is_mul_M = rng.random(num) < mul_fraction
  r_M = np.where(is_mul_M, a_M * b_M, a_M + b_M)
  return {"a": a_M, "b": b_M, "result": r_M, "la": la_M, "lb": lb_M, "lr": _num_digits(r_M),
          "is_mul": is_mul_M}


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
      [DIGIT0_ID + _digit(a, la - 1 - j), np.where(is_mul, TIMES_ID, PLUS_ID),
       DIGIT0_ID + _digit(b, eq_col - 1 - j), EQUALS_ID, DIGIT0_ID + _digit(r, k), SEP_ID],
      PAD_ID)

  # Addition: operand digits present in column k, and the carry into column k.
  n_add = (k < la).astype(np.int64) + (k < lb)
  low = _POW10[np.clip(k, 0, 18)]
  carry_in = (a % low + b % low) >= low
  add_cat = np.select([n_add == 0, carry_in, n_add == 2], [6, 5, 4], 3)
  # Multiplication: first, last, by a 1-digit number, or a multi-product column.
  single = (la == 1) | (lb == 1)
  mul_cat = np.select([k == 0, k == lr - 1, single], [8, 11, 9], 10)

  category = np.select(
      [in_a | in_b, at_op, at_eq, in_r & ~is_mul, in_r & is_mul, at_end & ~is_mul, at_end & is_mul],
      [0, 1, 2, add_cat, mul_cat, 7, 12], -1)
  length = (la + lb + lr + 3)[:, 0]
  return tokens.astype(np.int32), category.astype(np.int32), length


def problems_per_row(seq_len: int) -> int:
  """Problems drawn per row: a problem takes at least 6 tokens, so this many overfill it."""
  return seq_len // 6 + 1


def layout_rows(tok_RxMxP: np.ndarray, cat_RxMxP: np.ndarray, len_RxM: np.ndarray,
                seq_len: int) -> tuple[np.ndarray, np.ndarray]:
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


def _row_windows(stream: int, keys: tuple[int, ...], rows: range, seq_len: int, min_digits: int,
                 max_digits: int, mul_fraction: float) -> tuple[np.ndarray, np.ndarray]:
  """tokens_RxW and category_RxW of rows `rows`, row r drawn from keyed_rng(stream, *keys, r)."""
  num = problems_per_row(seq_len)
  drawn = [draw_problems(seeding.keyed_rng(stream, *keys, r), num, min_digits=min_digits,
                         max_digits=max_digits, mul_fraction=mul_fraction) for r in rows]
  problems = {k: np.concatenate([d[k] for d in drawn]) for k in drawn[0]}
  tok, cat, length = encode_problems(problems, max_digits)
  shape = (len(rows), num)
  return layout_rows(tok.reshape(*shape, -1), cat.reshape(*shape, -1), length.reshape(shape), seq_len)


def synthetic_batch(*, stream: int, keys: tuple[int, ...], rows: range, seq_len: int, min_digits: int,
                    max_digits: int, mul_fraction: float) -> packing.Batch:
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


def target_categories(*, stream: int, keys: tuple[int, ...], rows: range, seq_len: int, min_digits: int,
                      max_digits: int, mul_fraction: float) -> np.ndarray:
  """The CATEGORY_NAMES index of every target of `synthetic_batch` (same arguments), -1 where weight 0."""
  tokens_RxW, category_RxW = _row_windows(stream, keys, rows, seq_len, min_digits, max_digits, mul_fraction)
  return np.where(tokens_RxW[:, 1:] == PAD_ID, -1, category_RxW[:, 1:]).astype(np.int32)


def decode(ids) -> str:
  """Ids to text; padding is dropped."""
  return "".join(_CHARS[int(i)] for i in ids if 0 <= int(i) < VOCAB_SIZE)


def encode(text: str) -> np.ndarray:
  """Text (digits, "+", "*", "=", ";") to int32 ids; raises ValueError naming a character outside the vocabulary."""
  try:
    return np.array([_CHARS.index(ch) if ch else PAD_ID for ch in text], np.int32)
  except ValueError:
    bad = next(ch for ch in text if ch not in _CHARS)
    raise ValueError(f"Character {bad!r} is not in the synthetic vocabulary {''.join(_CHARS)!r}.") from None


def piece(token_id: int) -> str:
  """A printable string for one id ("<pad>" for padding)."""
  token_id = int(token_id)
  if not 0 <= token_id < VOCAB_SIZE:
    raise ValueError(f"Token id {token_id} is outside the synthetic vocabulary [0, {VOCAB_SIZE}).")
  return _CHARS[token_id] or "<pad>"
