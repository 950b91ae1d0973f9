"""Which checkpoint tensors make each model parameter, for streaming checkpoints whose layout is not the model's.

transformers 5 keeps mixture-of-experts weights as fused 3-D parameters (`mlp.experts.gate_up_proj [E, 2I, H]`,
`mlp.experts.down_proj [E, H, I]`) while checkpoints store one matrix per expert (`experts.{e}.w1.weight` for
Mixtral, `experts.{e}.gate_proj.weight` for Qwen-MoE), and renames some modules on load (Mixtral's
`block_sparse_moe` is `mlp`). `from_pretrained` converts with the architecture's conversion mapping
(`transformers.conversion_mapping`), and `save_pretrained` reverts it (`revert_weight_conversion`), so a checkpoint
saved by transformers is always in the per-expert layout.

A streamed run reads and writes one block at a time, so it applies the same mapping to one block's tensors: the
checkpoint keys are renamed with the architecture's renamings and converters exactly as the loader does (natural
key order, the first matching converter), each converter fuses its block's tensors, and a finished block is
written back through transformers' own reversal, i.e. in the checkpoint's own per-expert names and shapes, so that
`AutoModelForCausalLM.from_pretrained` loads the output as it loads the source.

Everything is checked on meta tensors before any file is read for its data: every parameter must be produced, with
its shape, by the names of one block (or the non-block part), and the reversal must give back exactly the source
keys and shapes. A checkpoint whose names already are the model's needs none of this (`identity`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

__all__ = ["CheckpointLayout"]


class CheckpointIndex(Protocol):
    """What the layout reads of a checkpoint (`optimum_si.checkpoint.index.CheckpointIndex`)."""

    shapes: dict[str, tuple[int, ...]]

    def read(self, key: str, device: torch.device | str = "cpu") -> torch.Tensor: ...

    def torch_dtype(self, key: str) -> torch.dtype | None: ...


class _Group:
    """Checkpoint keys that one transformers conversion turns into one or more parameters (fused experts)."""

    def __init__(self, first: str, converter: Any) -> None:
        self.first = first  # the loader's name for the conversion: the renamed key of its first source tensor
        self.converter = converter  # a template, copied for every conversion (a converter collects tensors)
        self.keys: list[tuple[str, str]] = []  # (checkpoint key, the source pattern it matched), in load order
        self.outputs: tuple[str, ...] = ()


class CheckpointLayout:
    """Model parameter names <-> checkpoint keys: identity for most, converted for fused experts."""

    def __init__(self, model: nn.Module, renamed: dict[str, str], groups: dict[str, _Group]) -> None:
        self.model = model
        self.renamed = renamed  # parameter -> its one checkpoint key (the same name, or a renamed module)
        self.groups = groups  # parameter -> the conversion that makes it
        self.identity = not groups and all(k == v for k, v in renamed.items())

    @classmethod
    def of(cls, model: nn.Module, index: CheckpointIndex, source: str = "The checkpoint") -> CheckpointLayout:
        """The layout of `index` for `model` (a skeleton on meta); ValueError if its tensors cannot make the model."""
        params = dict(model.named_parameters())
        optional = _tied_names(model)
        direct = {name: name for name in params if name in index.shapes}
        if len(direct) + len(optional - set(direct)) == len(params):
            layout = cls(model, direct, {})
        else:
            layout = cls._converted(model, index, params, source)
        layout._check_shapes(index, params, optional, source)
        return layout

    @classmethod
    def _converted(cls, model: nn.Module, index: CheckpointIndex, params: Mapping[str, nn.Parameter],
                   source: str) -> CheckpointLayout:
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import WeightConverter, dot_natural_key, rename_source_key
        except ImportError as err:  # the loader's internals moved: refuse rather than guess the layout
            raise ValueError(f"{source} stores tensors under other names than the model's parameters, and this "
                             f"transformers version does not expose its conversion mapping ({err}).") from err
        transforms = get_model_conversion_mapping(model, add_legacy=False)
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
        by_pattern = {pattern: c for c in converters for pattern in c.source_patterns}
        renamed: dict[str, str] = {}
        firsts: dict[str, _Group] = {}
        for key in sorted(index.shapes, key=dot_natural_key):  # the loader's order: experts stack as 0, 1, 2, ...
            target, pattern = rename_source_key(key, renamings, converters)
            if target not in params and key in params:  # as the loader: a name already the model's stays
                target, pattern = key, None
            if pattern is None:
                if target in params:
                    renamed[target] = key
                continue  # a tensor the model does not use (the loader ignores it too)
            group = firsts.setdefault(target, _Group(target, by_pattern[pattern]))
            group.keys.append((key, pattern))
        groups: dict[str, _Group] = {}
        for group in firsts.values():
            try:  # on meta tensors: shapes only, nothing is read
                outputs = _convert(group, {key: _meta_like(index, key) for key, _ in group.keys}, model)
            except Exception as err:  # a missing expert, a wrong shape: the conversion's own error, named
                raise ValueError(
                    f"{source}: {group.first} cannot be made from its {len(group.keys)} checkpoint tensors "
                    f"({group.keys[0][0]}, ...) as transformers loads it ({type(err).__name__}: {err}); the download "
                    "is incomplete, or the checkpoint and config.json do not match.") from err
            group.outputs = tuple(outputs)
            for name in outputs:
                if name not in params:
                    raise ValueError(f"{source}: transformers' conversion of {group.keys[0][0]}, ... makes {name}, "
                                     "which this model does not have; the checkpoint and config.json do not match.")
                groups[name] = group
        layout = cls(model, renamed, groups)
        layout._check_reversal(index, params, source)
        return layout

    def keys_of(self, name: str) -> list[str]:
        """The checkpoint keys parameter `name` is made from."""
        if name in self.groups:
            return [key for key, _ in self.groups[name].keys]
        return [self.renamed[name]] if name in self.renamed else []

    def read(self, names: list[str], index: CheckpointIndex, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Parameters `names` (model names) from `index`'s tensors, read on `device` and converted as on load."""
        out: dict[str, torch.Tensor] = {}
        for name in names:
            if name in out:
                continue
            group = self.groups.get(name)
            if group is None:
                out[name] = index.read(self.renamed[name], device)
            else:
                out.update(_convert(group, {key: index.read(key, device) for key, _ in group.keys}, self.model))
        return out

    def stored(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`tensors` (model names) under their checkpoint keys, in the checkpoint's layout (per-expert matrices)."""
        if self.identity:
            return dict(tensors)
        converted = {name: t for name, t in tensors.items()
                     if name in self.groups or name in self.renamed and self.renamed[name] != name}
        out = {name: t for name, t in tensors.items() if name not in converted}
        if converted:
            out.update(_revert(self.model, converted))
        return out

    def _check_shapes(self, index: CheckpointIndex, params: Mapping[str, nn.Parameter], optional: set[str],
                      source: str) -> None:
        for name, param in params.items():
            if name in self.groups:
                shape = tuple(_convert(self.groups[name], {k: _meta_like(index, k) for k, _ in
                                                           self.groups[name].keys}, self.model)[name].shape)
                stored = f"made by transformers' conversion of {self.groups[name].keys[0][0]}, ..."
            elif name in self.renamed:
                shape, stored = index.shapes[self.renamed[name]], "in the checkpoint"
            elif name in optional:
                continue
            else:
                raise ValueError(f"The checkpoint has no tensor {name!r} that the config requires; the download is "
                                 "incomplete.")
            if shape != tuple(param.shape):
                raise ValueError(f"Tensor {name} has shape {shape} {stored} but {tuple(param.shape)} in its config; "
                                 "the checkpoint and config.json do not match.")

    def _check_reversal(self, index: CheckpointIndex, params: Mapping[str, nn.Parameter], source: str) -> None:
        """Writing back must give exactly the source's keys and shapes, so the output loads like the source."""
        moved = {name for name in params if name in self.groups or self.renamed.get(name, name) != name}
        expected = {key for name in moved for key in self.keys_of(name)}
        got = _revert(self.model, {name: params[name] for name in moved})
        if set(got) != expected or any(tuple(t.shape) != index.shapes[k] for k, t in got.items()):
            extra, lost = sorted(set(got) - expected), sorted(expected - set(got))
            raise ValueError(
                f"{source} stores some tensors in another layout than the model's, and transformers' reversal of its "
                f"conversion does not give that layout back ({'writes ' + extra[0] if extra else 'loses ' + lost[0]}"
                f"{' ...' if len(extra) + len(lost) > 1 else ''}); streaming cannot write it in the source's layout. "
                "Load the model in memory and prune that instead."
            )


def _tied_names(model: nn.Module) -> set[str]:
    """Parameters a checkpoint may leave out because they are tied to another (the LM head)."""
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    return {name for name, _ in model.named_parameters() if tied and name.endswith("lm_head.weight")}


def _meta_like(index: CheckpointIndex, key: str) -> torch.Tensor:
    return torch.empty(index.shapes[key], dtype=index.torch_dtype(key) or torch.float32, device="meta")


def _convert(group: _Group, tensors: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`group`'s conversion of `tensors` (checkpoint key -> tensor), the way `from_pretrained` runs it."""
    from copy import deepcopy

    converter = deepcopy(group.converter)
    for key, pattern in group.keys:
        converter.add_tensor(group.first, key, pattern, tensors[key])
    out = converter.convert(group.first, model=model, config=getattr(model, "config", None))
    return {name: value[0] if isinstance(value, list) else value for name, value in out.items()}


def _revert(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from transformers.core_model_loading import revert_weight_conversion

    return revert_weight_conversion(model, tensors)
