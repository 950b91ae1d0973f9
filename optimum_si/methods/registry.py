"""The method registry: `SIConfig(method=name)` resolves here, and users plug in their own methods.

    from optimum_si.methods import PruningMethod, register_method

    @register_method
    class MyMetric(PruningMethod):
        name = "my-metric"
        citation = "Me et al., ..."

        def score(self, weight, stats):
            return weight.abs() * stats.sq_norms.sqrt()

    SIPruner(method="my-metric", sparsity=0.5).prune(model, dataset=...)

The built-in methods are registered when this module is imported (their modules import no torch, so looking a method
up, as the command line does while checking its arguments, stays fast).
"""

from __future__ import annotations

from .alps import ALPS
from .base import PruningMethod
from .magnitude import Magnitude
from .ria import RIA
from .sparsegpt import SparseGPT
from .wanda import Wanda
from .zpruner import ZPruner

__all__ = ["register_method", "get_method", "available_methods", "BUILTIN_METHODS"]

# In the order the command line and the docs list them.
BUILTIN_METHODS: tuple[type[PruningMethod], ...] = (Magnitude, Wanda, SparseGPT, RIA, ZPruner, ALPS)
_REGISTRY: dict[str, PruningMethod] = {}


def register_method(method: type[PruningMethod] | PruningMethod, *, overwrite: bool = False):
    """Register a `PruningMethod` subclass (usable as a class decorator; returns what it was given) or instance.

    Its `name` becomes a valid `SIConfig(method=...)`. Registering a taken name raises ValueError unless
    `overwrite=True`. A method that declares `updates_weights` must implement `solve`, any other `score`."""
    instance = method() if isinstance(method, type) else method
    if not isinstance(instance, PruningMethod):
        raise TypeError(f"register_method expects a PruningMethod subclass or instance, got {type(instance).__name__}.")
    name = instance.name
    if not isinstance(name, str) or not name or name != name.lower() or name.strip() != name:
        raise ValueError(f"A pruning method needs a non-empty lower-case `name`, got {name!r}.")
    if instance.si_statistics not in ("dense", "pruned"):
        raise ValueError(f"{name}: si_statistics must be 'dense' or 'pruned', got {instance.si_statistics!r}.")
    verb = "solve" if instance.updates_weights else "score"
    if getattr(type(instance), verb) is getattr(PruningMethod, verb):
        raise TypeError(f"{name}: a method with updates_weights={instance.updates_weights} must implement {verb}().")
    if name in _REGISTRY and not overwrite and type(_REGISTRY[name]) is not type(instance):
        raise ValueError(f"A pruning method named {name!r} is already registered; pass overwrite=True to replace it.")
    _REGISTRY[name] = instance
    return method


def get_method(name: str) -> PruningMethod:
    """The registered method called `name` (case-insensitive); ValueError naming the choices otherwise."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"method must be one of {', '.join(map(repr, available_methods()))}, got {name!r}.")
    return _REGISTRY[key]


def available_methods() -> tuple[str, ...]:
    """Names of the registered methods: the built-ins first, then the user's in registration order."""
    return tuple(_REGISTRY)


for _builtin in BUILTIN_METHODS:
    register_method(_builtin)
