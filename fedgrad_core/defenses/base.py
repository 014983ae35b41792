"""What every defense shares: the round's updates, the aggregate, flattening, and the registry.

A defense sees the previous global model's state and the round's client updates (plus its own
history); it never imports attacks, data or the simulation.  The robust rule of each method is a
plain function over a ``K x d`` matrix of flattened models; the classes registered here are thin
wrappers that add history and the NaN/inf guard that every defense owes the server.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from fedgrad_core.models import ultimate_layer
from fedgrad_core.registry import Registry

State = Mapping[str, Tensor]


@dataclass(frozen=True, eq=False)
class ClientUpdate:
    """One client's trained model for the round.

    ``state`` holds the client's full local model (not the difference to the global model), with
    exactly the global model's keys.  ``num_samples`` is the size of the data it trained on, the
    weight FedAvg gives it.
    """

    client_id: int
    state: State
    num_samples: int


@dataclass
class Aggregate:
    """The result of one round of aggregation.

    ``flagged`` are the client ids the defense excluded (or, for defenses that do not exclude,
    judged malicious); ``diagnostics`` is a JSON-friendly dict the simulation stores in the round's
    history (scores, thresholds, clusters...).
    """

    global_state: dict[str, Tensor]
    flagged: frozenset[int] = frozenset()
    diagnostics: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- flat layout


@dataclass(frozen=True)
class Layout:
    """Where each floating-point tensor of a state dict lives in a flat vector.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are not part of the vector: they are
    bookkeeping, not parameters, and are carried over from the global model.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]  # start of each name; the last entry is the total size

    @classmethod
    def of(cls, state: State) -> "Layout":
        names, shapes, offsets, total = [], [], [], 0
        for name, tensor in state.items():
            if not torch.is_floating_point(tensor):
                continue
            names.append(name)
            shapes.append(tensor.shape)
            offsets.append(total)
            total += tensor.numel()
        offsets.append(total)
        return cls(tuple(names), tuple(shapes), tuple(offsets))

    @property
    def size(self) -> int:
        return self.offsets[-1]

    def slice_of(self, name: str) -> slice:
        i = self.names.index(name)
        return slice(self.offsets[i], self.offsets[i + 1])

    def flatten(self, state: State) -> Tensor:
        missing = [n for n in self.names if n not in state]
        if missing:
            raise ValueError(f"state is missing keys {missing[:5]} of the global model")
        parts = []
        for name, shape in zip(self.names, self.shapes):
            tensor = state[name]
            if tensor.shape != shape:
                raise ValueError(
                    f"shape mismatch for {name!r}: got {tuple(tensor.shape)}, global model has {tuple(shape)}"
                )
            parts.append(tensor.detach().reshape(-1).to(torch.float32))
        return torch.cat(parts)

    def unflatten(self, vector: Tensor, template: State) -> dict[str, Tensor]:
        """A state dict with ``vector``'s values and ``template``'s non-float buffers and dtypes."""
        out: dict[str, Tensor] = {}
        for name, tensor in template.items():
            if name in self.names:
                piece = vector[self.slice_of(name)].reshape(tensor.shape)
                out[name] = piece.to(dtype=tensor.dtype, device=tensor.device).clone()
            else:
                out[name] = tensor.clone()
        return out


def stack_states(updates: Sequence[ClientUpdate], layout: Layout) -> Tensor:
    """The round's models as one ``K x d`` float32 matrix (rows in the order of ``updates``).

    Filled in place into the thread's reused workspace (see ``workspace``): one copy of the
    round's models, no per-client intermediate vectors, and no fresh K x d allocation per round
    (a fresh one costs more than the copy itself: the OS maps and zeroes every page on first
    touch; measured 5x slower for K = 30 LeNets).  Shapes are checked once, where updates enter
    (``Defense.aggregate``).
    """
    rows = workspace(len(updates), layout.size)
    for i, u in enumerate(updates):
        for name, start, stop in zip(layout.names, layout.offsets[:-1], layout.offsets[1:]):
            rows[i, start:stop].copy_(u.state[name].detach().reshape(-1))
    return rows


_LOCAL = threading.local()


def _sole_owner(tensor: Tensor) -> bool:
    """True when nothing but ``tensor`` itself (no view, no other tensor) refers to its memory."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:  # private API absent in this torch: never reuse
        return False
    # one reference from ``tensor``, one from the temporary storage object made to ask
    return use_count(tensor.untyped_storage()._cdata) <= 2


def workspace(k: int, d: int) -> Tensor:
    """A ``k x d`` float32 matrix (uninitialised) for this thread, reusing the previous one's memory.

    The memory is reused only when nothing outside still refers to the previous matrix (a caller
    that keeps a matrix or a view of it across rounds gets a fresh one next time, never an
    overwritten one).  The largest matrix asked for stays allocated between rounds (K x d x 4
    bytes: 144 MB for 30 LeNets); ``release_workspace`` frees it.
    """
    cached = getattr(_LOCAL, "buffer", None)
    if cached is None or cached.numel() < k * d or not _sole_owner(cached):
        cached = torch.empty(k * d, dtype=torch.float32)
        _LOCAL.buffer = cached
    return cached[: k * d].view(k, d)


def release_workspace() -> None:
    """Free this thread's workspace (the next ``stack_states`` allocates a new one)."""
    _LOCAL.buffer = None


# --------------------------------------------------------------------------- pairwise geometry
# Shared by the rules that compare clients: every pairwise quantity comes from one float64 Gram
# matrix of the round's updates, never from a Python loop over client pairs.

#: Columns per block of the Gram matrix: bounds the float32 block in memory and the float32
#: rounding of one block's products (sums over blocks are float64).
GRAM_CHUNK = 1 << 13


# --------------------------------------------------------------------------- shared helpers


def sorted_updates(updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
    """The round's updates ordered by client id: every rule's result is independent of order."""
    return sorted(updates, key=lambda u: u.client_id)


def update_matrix(global_state: State, updates: Sequence[ClientUpdate]) -> tuple[Layout, Tensor, Tensor]:
    """``(layout, g, deltas)``: the flat global model ``g`` (d,) and the K x d float32 matrix of
    the clients' updates ``w_i - g`` (rows in the order of ``updates``).

    Filled in place (one copy of the round's models, no intermediate per-client vectors).
    """
    layout = Layout.of(global_state)
    g = layout.flatten(global_state)
    deltas = stack_states(updates, layout)
    deltas.sub_(g)
    return layout, g, deltas


def gram64(rows: Tensor, *, center: Tensor | None = None, chunk: int = GRAM_CHUNK) -> Tensor:
    """``(rows - center) @ (rows - center).T`` as a float64 K x K matrix, over column blocks.

    Each block is centred into one reused float32 buffer (K x chunk floats: no centred K x d copy)
    and multiplied in float32; the blocks' K x K products are summed in float64.  Float32
    products are enough: the inputs are float32 models, so each entry already carries a relative
    rounding of about 6e-8, and a block of ``chunk`` columns adds about as much (measured: pairwise
    distances within 1e-7 relative of an all-float64 Gram at K = 10..100, d = 1.2M), for half the
    time.  Float64 is needed where the K x K results meet: the sum over blocks, and the distances
    ``|a|^2 + |b|^2 - 2 a.b`` formed from them, which cancel when clients sit close together.
    Centring on the global model shrinks that cancellation too.
    """
    k, d = rows.shape
    gram = torch.zeros((k, k), dtype=torch.float64)
    # float64 rows (e.g. a float64 history) keep float64 products: nothing to gain from rounding them
    dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    buffer = torch.empty((k, min(chunk, max(d, 1))), dtype=dtype)
    for start in range(0, d, chunk):
        width = min(chunk, d - start)
        block = buffer[:, :width]
        if center is not None:
            torch.sub(rows[:, start : start + width], center[start : start + width], out=block)
        else:
            block.copy_(rows[:, start : start + width])
        gram += (block @ block.T).to(torch.float64)
    # a float32 GEMM need not give a bitwise symmetric product; consumers (HDBSCAN) check symmetry
    return gram.add_(gram.T.clone()).mul_(0.5)


def combine(rows: Tensor, weights: Tensor) -> Tensor:
    """``sum_i w_i rows_i`` for weights already normalised (a GEMV: no K x d temporary)."""
    return weights.to(rows.dtype) @ rows


def squared_distances(gram: Tensor) -> Tensor:
    """Pairwise squared L2 distances from a Gram matrix (clamped at 0, exact 0 on the diagonal)."""
    sq = gram.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2.0 * gram).clamp_min_(0.0)
    dist.fill_diagonal_(0.0)
    return dist


def cosine_similarities(gram: Tensor) -> Tensor:
    """Pairwise cosine similarities from a Gram matrix; a zero vector has similarity 0 to all."""
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    denom = norms[:, None] * norms[None, :]
    cos = torch.where(denom > 0, gram / torch.where(denom > 0, denom, 1.0), 0.0)
    return cos.clamp_(-1.0, 1.0)


def pairwise_sq_distances(
    rows: Tensor,
    *,
    center: Optional[Tensor] = None,
    columns: Optional[Sequence[slice]] = None,
    chunk: int = GRAM_CHUNK,
) -> np.ndarray:
    """K x K squared L2 distances between the rows of a K x d matrix, from one float64 Gram
    matrix of the rows centred on ``center`` (the global model), built over column chunks.

    ``columns`` (contiguous runs) restricts the distances to those columns; the Gram matrix is
    summed run by run, so no K x d' copy of the selected columns is made.
    """
    if columns is None:
        gram = gram64(rows, center=center, chunk=chunk)
    else:
        gram = torch.zeros((rows.shape[0], rows.shape[0]), dtype=torch.float64)
        for cols in columns:
            gram += gram64(rows[:, cols], center=None if center is None else center[cols], chunk=chunk)
    return squared_distances(gram).numpy()


def normalize_rows(rows: np.ndarray) -> np.ndarray:
    """Every row divided by its L2 norm (zero rows stay zero)."""
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def cosine_matrix(rows: np.ndarray) -> np.ndarray:
    """K x K cosine similarities of the rows (0 against a zero row)."""
    unit = normalize_rows(rows)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def cosine_to(rows: Tensor, direction: Tensor) -> np.ndarray:
    """Cosine of every row of ``rows`` (K x p) with ``direction`` (p); 0 where a norm is 0."""
    rows = rows.to(torch.float64)
    direction = direction.to(torch.float64)
    denom = rows.norm(dim=1) * direction.norm()
    dots = rows @ direction
    out = torch.where(denom > 0, dots / torch.where(denom > 0, denom, torch.ones_like(denom)), 0.0)
    return out.numpy()


def min_max_scale(values: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min); all zeros when the values are all equal (nothing to scale)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values.copy()
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return np.zeros_like(values)
    return (values - lo) / (hi - lo)


def column_min_max(matrix: np.ndarray) -> np.ndarray:
    """Min-max scale every column of ``matrix`` on its own; a constant column becomes 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    lo = matrix.min(axis=0, keepdims=True)
    span = matrix.max(axis=0, keepdims=True) - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (matrix - lo) / safe, 0.0)


def sum_of_nearest(sq_dists: Tensor, num_neighbors: int) -> Tensor:
    """Krum's score: each row's sum of its ``num_neighbors`` smallest distances to the *other* rows."""
    k = sq_dists.shape[0]
    if not 1 <= num_neighbors <= k - 1:
        raise ValueError(f"num_neighbors must lie in [1, {k - 1}] for {k} clients, got {num_neighbors}")
    dist = sq_dists.clone().fill_diagonal_(float("inf"))
    return torch.sort(dist, dim=1).values[:, :num_neighbors].sum(dim=1)


def resolve_f(n: int, *, f: int | None, attacker_fraction: float) -> int:
    """The number of tolerated Byzantine clients among ``n``: explicit ``f`` or ``int(frac * n)``."""
    if f is None:
        if not 0.0 <= attacker_fraction < 1.0:
            raise ValueError(f"attacker_fraction must be in [0, 1), got {attacker_fraction}")
        return int(attacker_fraction * n)
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    return int(f)


# --------------------------------------------------------------------------- the ultimate layer


def find_ultimate_layer(state: State) -> tuple[str, str]:
    """Keys (weight, bias) of the ultimate layer (``models.ultimate_layer``), its bias required."""
    weight_key, bias_key = ultimate_layer(state)
    if bias_key not in state:
        raise ValueError(
            f"the ultimate layer {weight_key!r} has no bias {bias_key!r}; "
            "name the layer with ultimate_layer=(weight_key, bias_key)"
        )
    return weight_key, bias_key


#: Last name component of the float buffers torch's normalisation layers keep (BatchNorm's running
#: statistics): state-dict entries that are not parameters.
NORM_BUFFER_NAMES = ("running_mean", "running_var")


def parameter_keys(state: State, parameter_names: Optional[Sequence[str]] = None) -> list[str]:
    """The floating entries of ``state`` that are model parameters, in state-dict order.

    With ``parameter_names`` (the names of ``model.named_parameters()``) exactly those, and every
    one must be in ``state``; without, every floating entry except the running statistics of
    normalisation layers (last name component in ``NORM_BUFFER_NAMES``).
    """
    if parameter_names is not None:
        missing = sorted(set(parameter_names) - set(state))
        if missing:
            raise ValueError(
                f"the model's parameters {missing[:5]} are not in the global model's state: "
                "model_factory builds a different model"
            )
        wanted = set(parameter_names)
        keys = [n for n, t in state.items() if n in wanted and torch.is_floating_point(t)]
    else:
        keys = [
            n for n, t in state.items() if torch.is_floating_point(t) and n.rsplit(".", 1)[-1] not in NORM_BUFFER_NAMES
        ]
    if not keys:
        raise ValueError("the model's state holds no floating-point parameter")
    return keys


def parameter_columns(layout: Layout, keys: Sequence[str]) -> list[slice]:
    """The columns of ``layout``'s flat vector that hold ``keys``, merged into contiguous runs."""
    wanted = set(keys)
    runs: list[slice] = []
    for name, start, stop in zip(layout.names, layout.offsets[:-1], layout.offsets[1:]):
        if name not in wanted or stop == start:
            continue
        if runs and runs[-1].stop == start:
            runs[-1] = slice(runs[-1].start, stop)
        else:
            runs.append(slice(start, stop))
    return runs


# --------------------------------------------------------------------------- parameter checks
# Every message names the parameter, so a configuration error points at its line.


def check_real(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """``value`` as a float in [lo, hi] (``(lo, hi]`` with ``lo_open``), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise ValueError(f"{name} must lie in {bracket}{lo}, {hi}], got {value!r}")
    return float(value)


def check_int(name: str, value: Any, lo: int) -> int:
    """``value`` as an int ``>= lo`` (bools refused), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def sample_weights(updates: Sequence[ClientUpdate]) -> Tensor:
    """FedAvg's weights n_i / n as a float64 vector (float64: sums of many small fractions)."""
    counts = torch.tensor([float(u.num_samples) for u in updates], dtype=torch.float64)
    if (counts <= 0).any():
        raise ValueError("every ClientUpdate needs num_samples > 0")
    return counts / counts.sum()


def weighted_average(rows: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i rows_i with weights that need not be normalised (normalised here); one GEMV."""
    w = weights.to(torch.float64)
    return (w / w.sum()).to(rows.dtype) @ rows


# --------------------------------------------------------------------------- base class


def is_finite_state(state: State) -> bool:
    """True when no floating tensor of ``state`` holds NaN or inf.

    A finite sum proves the tensor finite in one cheap pass; only when the sum is not finite (a
    NaN/inf, or an overflow of huge finite values) is the tensor checked element by element.
    """
    return all(
        bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())
        for t in state.values()
        if torch.is_floating_point(t)
    )


class Defense:
    """Base of every registered defense: the NaN/inf guard around ``aggregate_finite``.

    Subclasses implement ``aggregate_finite(global_state, updates, round_idx)`` for updates that
    are all finite.  Updates holding NaN or inf are flagged here and never reach the rule, and a
    non-finite result (which a correct rule never produces) keeps the previous global model, so a
    broken client can neither crash the server nor poison the global model.
    """

    name = "base"

    def aggregate(self, global_state: State, updates: Sequence[ClientUpdate], round_idx: int) -> Aggregate:
        if not updates:
            raise ValueError("aggregate() needs at least one client update")
        ids = [u.client_id for u in updates]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate client ids in one round: {sorted(ids)}")
        expected = set(global_state)
        for u in updates:
            if set(u.state) != expected:
                extra = sorted(set(u.state) - expected)[:3]
                missing = sorted(expected - set(u.state))[:3]
                raise ValueError(
                    f"client {u.client_id}: state keys differ from the global model's "
                    f"(missing {missing}, unexpected {extra})"
                )
            for name, tensor in u.state.items():
                if tensor.shape != global_state[name].shape:
                    raise ValueError(
                        f"client {u.client_id}: shape mismatch for {name!r}: got "
                        f"{tuple(tensor.shape)}, global model has {tuple(global_state[name].shape)}"
                    )
        ok = [is_finite_state(u.state) for u in updates]
        finite = [u for u, good in zip(updates, ok) if good]
        broken = frozenset(u.client_id for u, good in zip(updates, ok) if not good)
        if not finite:
            return Aggregate(copy_state(global_state), broken, {"non_finite": sorted(broken)})
        result = self.aggregate_finite(global_state, finite, round_idx)
        if not is_finite_state(result.global_state):
            result = Aggregate(copy_state(global_state), result.flagged, dict(result.diagnostics))
            result.diagnostics["kept_previous_model"] = "aggregate was not finite"
        if broken:
            result.flagged = frozenset(result.flagged | broken)
            result.diagnostics["non_finite"] = sorted(broken)
        return result

    def aggregate_finite(self, global_state: State, updates: Sequence[ClientUpdate], round_idx: int) -> Aggregate:
        raise NotImplementedError

    def validate(self, clients_per_round: int) -> None:
        """Raise ValueError when the method cannot run with this many updates per round."""

    # ------------------------------------------------------------------ state as data
    # A defense's memory across rounds is saved as plain data, like torch.nn.Module.state_dict,
    # so that a checkpoint loads with torch.load(..., weights_only=True) and never runs code.

    #: Layout version of ``state_dict()``.  A stateful defense bumps its own whenever the layout
    #: changes, so that a checkpoint written by another version is refused with a clear message.
    state_version = 1

    def state_dict(self) -> dict[str, Any]:
        """The defense's history across rounds, as tensors, numbers, strings, lists and dicts.

        Stateless defenses (the default) return ``{}``.  A defense that keeps anything across
        rounds must override both methods, or a resumed run silently starts it afresh; it returns
        ``self._versioned({...})``, which adds its name and ``state_version``.  The constructor's
        parameters are not part of it: they come from the run's configuration.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict()`` returned (a stateless defense accepts only ``{}``).

        Raises ValueError, naming the defense and both versions, for a state written for another
        defense or by another version of this one.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"defense {self.name!r}: a saved state must be a dict, got {type(state).__name__}")
        if state:
            self._check_state(state)
            raise ValueError(f"defense {self.name!r} keeps no state, but the saved state holds {sorted(state)}")

    def _versioned(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        return {"defense": self.name, "version": self.state_version, **fields}

    def _check_state(self, state: Mapping[str, Any], keys: Sequence[str] = ()) -> None:
        """ValueError unless ``state`` was written by this defense at this ``state_version`` and
        holds ``keys``."""
        if not isinstance(state, Mapping) or not state:
            found = "an empty state" if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"defense {self.name!r} (state format version {self.state_version}) cannot load "
                f"{found}: was the checkpoint written for a stateless defense?"
            )
        name, version = state.get("defense"), state.get("version")
        if name != self.name:
            raise ValueError(
                f"defense {self.name!r} (state format version {self.state_version}) cannot load a state "
                f"written for defense {name!r} (format version {version})"
            )
        if version != self.state_version:
            raise ValueError(
                f"defense {self.name!r}: the saved state has format version {version}, this code "
                f"reads version {self.state_version}; it was written by another version of "
                "fedgrad_core: resume with that version or start the run afresh"
            )
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"defense {self.name!r}: the saved state (version {version}) lacks {missing}")

    def _state_tensor(
        self, state: Mapping[str, Any], key: str, *, dtype: torch.dtype, shape: Sequence[int | None]
    ) -> Tensor:
        """``state[key]`` checked to be a tensor of ``dtype`` and ``shape`` (None: any size)."""
        value = state[key]
        ok = (
            isinstance(value, Tensor)
            and value.dtype == dtype
            and value.dim() == len(shape)
            and all(want is None or want == got for want, got in zip(shape, value.shape))
        )
        if not ok:
            found = (
                f"{value.dtype} tensor of shape {tuple(value.shape)}"
                if isinstance(value, Tensor)
                else type(value).__name__
            )
            wanted = tuple("*" if s is None else s for s in shape)
            raise ValueError(
                f"defense {self.name!r}: saved state entry {key!r} should be a {dtype} tensor of "
                f"shape {wanted}, found a {found}"
            )
        return value.detach().cpu()


def copy_state(state: State) -> dict[str, Tensor]:
    """A detached copy of every tensor of ``state`` (the previous model kept, a client's model)."""
    return {k: v.detach().clone() for k, v in state.items()}


# --------------------------------------------------------------------------- registry

# A plain function (global_state, updates, round_idx) -> Aggregate-like registers as a defense too.
REGISTRY: Registry[Defense] = Registry(
    "defense", builtin="fedgrad_core.defenses", adapt="fedgrad_core.defenses.function:defense_factory"
)
register = REGISTRY.register

#: Parameters the simulation supplies to every defense whose constructor accepts them.
CONTEXT_PARAMS = ("seed", "attacker_fraction", "model_factory", "num_classes")


def available_defenses() -> list[str]:
    return REGISTRY.names()


def accepted_params(name: str) -> set[str]:
    """Keyword parameters the defense ``name`` accepts."""
    return REGISTRY.accepted_params(name)


def make_defense(name: str, **params: Any) -> Defense:
    """Build the defense registered as ``name`` with keyword-only parameters ``params``."""
    return REGISTRY.make(name, **params)


def build_defense(name: str, params: Mapping[str, Any], context: Mapping[str, Any]) -> Defense:
    """``make_defense`` with the run's context filled in where the defense accepts it.

    ``context`` holds the keys of ``CONTEXT_PARAMS`` (seed, attacker_fraction, model_factory,
    num_classes); explicit ``params`` win over it.
    """
    accepted = accepted_params(name)
    merged = {k: v for k, v in context.items() if k in accepted and k in CONTEXT_PARAMS}
    merged.update(params)
    return make_defense(name, **merged)
