"""Parallel layouts of one serving instance, and the checks that a layout fits a model."""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from costmodel.models import ModelSpec
from hardware.errors import PlannerInputError
from hardware.loading import Checked


class Layout(Checked):
    """TP/PP/DP/EP/attention-DP/SP degrees.

    One instance spans `tp x attention_dp x pp` devices; `dp` counts instances (replicas). A MoE
    layer's experts are split over `ep` ranks with MoE-TP = `tp x attention_dp / ep` (the
    TensorRT-LLM / SGLang convention). `sp` splits one long prompt's prefill over `sp` ranks of
    the instance's `tp x attention_dp` group (context parallelism), so it must divide that group;
    the cost model takes those ranks from the attention-DP ones (`check_layout`, costmodel/sp.py).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tp: int = Field(default=1, ge=1, description="Tensor-parallel degree (attention heads, FFN).")
    pp: int = Field(default=1, ge=1, description="Pipeline stages (layers split in order).")
    dp: int = Field(default=1, ge=1, description="Replicas of the instance.")
    ep: int = Field(default=1, ge=1, description="Expert-parallel degree for MoE layers.")
    attention_dp: int = Field(default=1, ge=1, description="Attention data-parallel ranks (DEP).")
    sp: int = Field(default=1, ge=1, description="Sequence/context-parallel ranks for prefill.")

    @model_validator(mode="after")
    def _shape(self) -> Layout:
        group = self.tp * self.attention_dp
        if group % self.ep:
            raise ValueError(f"ep ({self.ep}) must divide tp x attention_dp ({group})")
        if group % self.sp:
            raise ValueError(f"sp ({self.sp}) must divide tp x attention_dp ({group})")
        return self

    @property
    def instance_devices(self) -> int:
        return self.tp * self.attention_dp * self.pp

    @property
    def total_devices(self) -> int:
        return self.instance_devices * self.dp

    @property
    def moe_tp(self) -> int:
        return self.tp * self.attention_dp // self.ep

    def label(self) -> str:
        parts = [f"tp{self.tp}"]
        parts += [f"{k}{v}" for k, v in (("pp", self.pp), ("ep", self.ep),
                  ("adp", self.attention_dp), ("sp", self.sp), ("dp", self.dp)) if v > 1]
        return "-".join(parts)


def check_layout(model: ModelSpec, layout: Layout, redundant_experts: int = 0) -> None:
    """Raise PlannerInputError when `layout` cannot shard `model` (names the field and fix).

    With `redundant_experts` extra copies (EPLB) the expert slots, routed plus redundant, must divide
    over `ep` (DeepSeek's decode: 256 + 32 over EP144)."""
    if model.num_heads % layout.tp:
        raise PlannerInputError(
            f"layout.tp={layout.tp} does not divide the {model.num_heads} attention heads of "
            f"{model.name}; pick a divisor of {model.num_heads}"
        )
    if layout.pp > model.num_layers:
        raise PlannerInputError(
            f"layout.pp={layout.pp} exceeds the {model.num_layers} layers of {model.name}"
        )
    if layout.attention_dp % layout.sp:
        raise PlannerInputError(
            f"layout.sp={layout.sp} must divide attention_dp={layout.attention_dp}: context-parallel ranks are "
            "attention-DP ranks that each hold all the weights (costmodel/sp.py); raise attention_dp"
        )
    if model.moe is None:
        if layout.ep > 1:
            raise PlannerInputError(f"layout.ep={layout.ep} needs a MoE model; {model.name} is dense")
        return
    if redundant_experts < 0:
        raise PlannerInputError(f"redundant_experts={redundant_experts} must be 0 or more extra expert copies")
    slots = model.moe.num_experts + redundant_experts
    if slots % layout.ep:
        extra = f" + {redundant_experts} redundant" if redundant_experts else ""
        raise PlannerInputError(
            f"layout.ep={layout.ep} does not divide the {model.moe.num_experts}{extra} experts of "
            f"{model.name}; pick a divisor of {slots} or add redundant experts to a multiple of ep"
        )
    if model.moe.intermediate_size % layout.moe_tp:
        raise PlannerInputError(
            f"MoE-TP = tp x attention_dp / ep = {layout.moe_tp} does not divide the expert width "
            f"{model.moe.intermediate_size}; raise ep"
        )
