"""How the teacher is adapted: one registered entry per method.

A peft method is an entry that maps our config onto peft's own config class (``peft_method``);
the training loop is shared. ``freeze`` and ``full`` are the non-peft baselines. The modules
trained in full beside an adapter default to the architecture's head modules (the adapter knows
that BERT has a pooler and MPNet has none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import Field, model_validator

from slimflow.models.archs import adapter_of
from slimflow.models.config.base import PluginConfig
from slimflow.models.core.plugins import Registry


class MethodConfig(PluginConfig):
    """Base of every fine-tuning method config."""


@dataclass
class MethodContext:
    """What preparing a model for a method may need besides its config."""

    total_steps: int  # optimizer steps planned (AdaLoRA schedules its rank budget on them)
    arch: Any  # slimflow.models.archs.ArchAdapter of the model
    family: Any  # slimflow.models.families.TaskFamily (peft's task type)
    num_layers: int = 0  # transformer blocks of the model (set when a peft method prepares it)


@dataclass(frozen=True)
class Method:
    config: type[MethodConfig]
    prepare: Callable[[Any, Any, MethodContext], Any]  # (model, cfg, ctx) -> model ready to train
    # (prepared model) -> per-optimizer-step callback, for methods that adapt during training
    on_step: Callable[[Any], Callable[[int], None]] | None = None
    mergeable: bool = True  # whether the adapter folds into the base weights after training


METHODS: Registry[Method] = Registry("fine-tuning method")


# -------------------------------------------------------------------------------- peft methods
class PeftMethodConfig(MethodConfig):
    modules_to_save: list[str] | None = Field(
        None,
        description="Modules trained in full beside the adapter; None = the architecture's head modules "
        "(BERT: classifier and pooler, which sentence-embedding checkpoints never trained; MPNet: "
        "classifier).",
    )


def peft_method(
    config_cls: type[PeftMethodConfig],
    to_peft: Callable[[Any, MethodContext, dict[str, Any]], Any],
    *,
    on_step: Callable[[Any], Callable[[int], None]] | None = None,
    prompt_learning: bool = False,
) -> None:
    """Register a peft method: ``to_peft(cfg, ctx, common)`` returns peft's config object
    (``common`` holds the task type and the modules peft itself must wrap)."""

    def prepare(model: Any, cfg: PeftMethodConfig, ctx: MethodContext) -> Any:
        import peft

        keep = (
            list(cfg.modules_to_save)
            if cfg.modules_to_save is not None
            else list(ctx.family.trained_heads(ctx.arch))
        )
        # Mergeable methods: peft wraps only the head (it does so for SEQ_CLS by itself); the other
        # modules_to_save are unfrozen in place, because peft's IA3 unload breaks on wrapped
        # non-Linear modules such as BertPooler. Prompt-learning methods are never merged: peft keeps them.
        common = {"task_type": getattr(peft.TaskType, ctx.family.peft_task_type),
                  "modules_to_save": keep if prompt_learning else None}  # fmt: skip
        ctx = replace(ctx, num_layers=len(ctx.arch.layers(model)))
        wrapped = peft.get_peft_model(model, to_peft(cfg, ctx, common))
        if not prompt_learning:
            _unfreeze(wrapped, set(keep), set(ctx.family.head_names))
        return wrapped

    kind = config_cls.plugin_kind()
    METHODS.add(kind, Method(config_cls, prepare, on_step, mergeable=not prompt_learning))


def _unfreeze(model: Any, names: set[str], wrapped_by_peft: set[str]) -> None:
    found = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in names and "modules_to_save" not in name and "original_module" not in name:
            found.add(leaf)
            for p in module.parameters():
                p.requires_grad = True
    missing = names - found - wrapped_by_peft  # the task head is wrapped by peft itself
    if missing:
        raise ValueError(f"modules_to_save: no module named {sorted(missing)} in {type(model).__name__}")


class LoraMethod(PeftMethodConfig):
    kind: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | None = Field(
        None,
        description="Module names to adapt; None = the architecture's default (BERT: peft's; MPNet: q, v).",
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    adapt_top_layers: int | None = Field(
        None,
        ge=1,
        description="Adapt only the top N transformer layers (peft's layers_to_transform); None = all. "
        "Backpropagation then stops below them: less training compute, and fewer layers to adapt.",
    )


def _targets(cfg: Any, ctx: MethodContext) -> list[str] | None:
    return cfg.target_modules if cfg.target_modules is not None else ctx.arch.default_lora_targets


def _top_layers(top: int | None, ctx: MethodContext) -> dict[str, Any]:
    """peft's ``layers_to_transform`` for the top ``top`` layers (none: every layer)."""
    if top is None:
        return {}
    if top > ctx.num_layers:
        raise ValueError(f"adapt_top_layers={top} but the model has {ctx.num_layers} layers")
    return {"layers_to_transform": list(range(ctx.num_layers - top, ctx.num_layers))}


def _lora(cfg: LoraMethod, ctx: MethodContext, common: dict[str, Any]) -> Any:
    import peft

    return peft.LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=_targets(cfg, ctx),
        use_dora=cfg.use_dora, use_rslora=cfg.use_rslora, **_top_layers(cfg.adapt_top_layers, ctx), **common,
    )  # fmt: skip


peft_method(LoraMethod, _lora)


class AdaLoraMethod(PeftMethodConfig):
    kind: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1, le=1024, description="Initial rank of every adapted matrix.")
    target_r: int = Field(8, ge=1, le=1024, description="Average rank after budget allocation.")
    alpha: float = Field(16, gt=0, description="Scaling numerator.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the adapter branch.")
    target_modules: list[str] | None = Field(None, description="Module names; None = peft's default.")
    tinit_fraction: float = Field(0.1, ge=0, lt=1, description="Share of steps before rank pruning starts.")
    tfinal_fraction: float = Field(0.2, ge=0, lt=1, description="Share of final steps with ranks frozen.")

    @model_validator(mode="after")
    def _ranks(self) -> AdaLoraMethod:
        if self.target_r > self.init_r:
            raise ValueError("target_r must not exceed init_r")
        if self.tinit_fraction + self.tfinal_fraction >= 1:
            raise ValueError("tinit_fraction + tfinal_fraction must be below 1")
        return self


def _adalora(cfg: AdaLoraMethod, ctx: MethodContext, common: dict[str, Any]) -> Any:
    import peft

    total = ctx.total_steps
    return peft.AdaLoraConfig(
        init_r=cfg.init_r, target_r=cfg.target_r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=_targets(cfg, ctx), total_step=max(total, 2), tinit=int(cfg.tinit_fraction * total),
        tfinal=int(cfg.tfinal_fraction * total), **common,
    )  # fmt: skip


def _adalora_step(model: Any) -> Callable[[int], None]:
    inner = model.base_model

    def on_step(step: int) -> None:  # AdaLoRA re-allocates ranks after each optimizer step
        inner.update_and_allocate(step)

    return on_step


peft_method(AdaLoraMethod, _adalora, on_step=_adalora_step)


class IA3Method(PeftMethodConfig):
    kind: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(None, description="Module names; None = peft's default.")
    feedforward_modules: list[str] | None = Field(
        None, description="Subset of target_modules that are feed-forward layers; None = peft's default."
    )


def _ia3(cfg: IA3Method, ctx: MethodContext, common: dict[str, Any]) -> Any:
    import peft

    return peft.IA3Config(
        target_modules=cfg.target_modules, feedforward_modules=cfg.feedforward_modules, **common
    )


peft_method(IA3Method, _ia3)


class PrefixTuningMethod(PeftMethodConfig):
    kind: Literal["prefix_tuning"] = "prefix_tuning"
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Trained prefix length per layer.")
    prefix_projection: bool = Field(False, description="Re-parameterise the prefix through an MLP.")


def _prefix(cfg: PrefixTuningMethod, ctx: MethodContext, common: dict[str, Any]) -> Any:
    import peft

    return peft.PrefixTuningConfig(
        num_virtual_tokens=cfg.num_virtual_tokens, prefix_projection=cfg.prefix_projection, **common
    )


peft_method(PrefixTuningMethod, _prefix, prompt_learning=True)


# ---------------------------------------------------------------------------- non-peft methods
class FreezeMethod(MethodConfig):
    kind: Literal["freeze"] = "freeze"
    train_top_layers: int = Field(
        2, ge=0, description="Encoder layers trained from the top; embeddings and the rest are frozen."
    )


def _freeze(model: Any, cfg: FreezeMethod, ctx: MethodContext) -> Any:
    layers = ctx.arch.layers(model)
    if cfg.train_top_layers > len(layers):
        raise ValueError(f"train_top_layers={cfg.train_top_layers} but the model has {len(layers)} layers")
    for p in model.parameters():
        p.requires_grad = False
    keep = list(layers)[len(layers) - cfg.train_top_layers :] if cfg.train_top_layers else []
    for module in keep:
        for p in module.parameters():
            p.requires_grad = True
    heads = set(ctx.family.trained_heads(ctx.arch)) | set(ctx.family.head_names)
    for name, module in model.named_modules():  # the head (and pooler, if any) always train
        if name.rsplit(".", 1)[-1] in heads:
            for p in module.parameters():
                p.requires_grad = True
    return model


METHODS.add("freeze", Method(FreezeMethod, _freeze, mergeable=False))


class FullMethod(MethodConfig):
    kind: Literal["full"] = "full"


METHODS.add("full", Method(FullMethod, lambda model, cfg, ctx: model, mergeable=False))


def apply_method(model: Any, cfg: MethodConfig, total_steps: int, family: Any) -> Any:
    """``model`` prepared for training with the method ``cfg`` (a peft wrapper, frozen layers, or as is)."""
    return METHODS.get(cfg.kind).prepare(model, cfg, MethodContext(total_steps, adapter_of(model), family))
