"""Booster: puts PEFT LoRA boosters on a model and runs the round changes of a boosting run
(merge into the base weights in fp32, re-initialise in place, reset the optimizer state, pick layers)."""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from .checkpoint import (
    booster_state,
    check_compatible,
    extra_trainables,
    load_state_file,
    merge_policy_of,
    save_state_file,
)
from .compat import check_private_apis
from .config import BoostConfig
from .export import save_adapter, save_merged
from .ledger import Ledger
from .merge import (
    LowRankSidePath,
    add_delta_,
    as_local_layout,
    is_quantized,
    lora_delta,
    needs_residual,
    rounds_stochastically,
)
from .optim import make_lr_scheduler, reset_optimizer_state
from .persistent import chain_part, restart_chain_part
from .plan import RoundPlan, round_generator
from .selection import proportional, top_k_with_visits
from .sketch import GradientSketcher, TopSingular, factors_from_gradient
from .slot import ADAPTER, Slot
from .targets import (
    ALL_LAYERS,
    check_modules_to_save,
    layer_keys_of,
    refuse_existing_adapters,
    refuse_partitioned_parameters,
    resolve_targets,
    tied_input_embeddings,
)


class Booster:
    """Boosts low-rank adapters on ``model``: train a booster, merge it, start a fresh one, repeat.

    Use ``booster.model`` (a ``peft.PeftModel``) for training, build the optimizer from
    ``booster.parameters()``, and call ``booster.step(optimizer)`` after every optimizer step
    (``BoostCallback`` does it under ``transformers.Trainer``).

    XGBLoRA's norm penalty lambda * (||A||^2 + ||B||^2) of the live booster is added to ``outputs.loss``
    by a forward hook whenever the model computes its own loss while training with gradients on; a
    loop that computes its loss from the logits adds ``booster.penalty()`` itself.

    Args:
        model: a transformers (or any torch) model without adapters; it is wrapped in place.
        config: the BoostConfig; ``BoostConfig()`` (XGBLoRA) when None.
        total_steps: the run's number of optimizer steps, needed when ``rounds`` is set without
            ``steps_per_round``; ``BoostCallback`` passes the Trainer's.
    """

    def __init__(self, model: nn.Module, config: BoostConfig | None = None, *, total_steps: int | None = None):
        check_private_apis()
        self.config = config if config is not None else BoostConfig()
        if not isinstance(self.config, BoostConfig):
            raise TypeError(f"config must be a BoostConfig, got {type(self.config).__name__}.")
        if total_steps is not None and (
            isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1
        ):
            raise ValueError(f"total_steps={total_steps!r} is not valid; use an integer >= 1 or None.")
        refuse_existing_adapters(model)
        refuse_partitioned_parameters(model)
        cfg = self.config
        targets = resolve_targets(model, cfg.target_modules, cfg.layers_pattern)
        check_modules_to_save(model, targets, cfg.modules_to_save)
        if cfg.layers_per_round is None:
            layer_of = dict.fromkeys(targets, ALL_LAYERS)
        else:
            layer_of = layer_keys_of(model, targets, cfg.layers_pattern)
        layer_keys = tuple(dict.fromkeys(layer_of.values()))
        # Everything that can be refused is checked before the model is wrapped: a failed construction
        # must leave the caller's model as it was, so a retry with a good config works.
        plan = RoundPlan(
            layer_keys,
            _count_layers(cfg.layers_per_round, len(layer_keys)),
            cfg.steps_per_round,
            cfg.rounds,
            total_steps,
            cfg.seed,
        )

        lora_config = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=targets,
            fan_in_fan_out=any(isinstance(model.get_submodule(n), Conv1D) for n in targets),
            modules_to_save=cfg.modules_to_save,
            ensure_weight_tying=tied_input_embeddings(model, cfg.modules_to_save) is not None,
            bias="none",
            init_lora_weights=True,
        )
        self.model: PeftModel = get_peft_model(model, lora_config, adapter_name=ADAPTER)
        try:
            self._attach(targets, layer_of, plan)
        except BaseException:
            self.model.unload()  # takes the LoRA layers out again
            raise

    def _attach(self, targets: list[str], layer_of: dict[str, str], plan: RoundPlan) -> None:
        """The slots, ledger, plan and first round on the freshly wrapped model."""
        cfg = self.config
        base = self.model.get_base_model()
        self.slots: tuple[Slot, ...] = tuple(
            Slot(name, layer_of[name], lora) for name, lora in ((n, base.get_submodule(n)) for n in targets)
        )
        self._freeze_factors()

        self.ledger = Ledger({s.name: s.fan_in_fan_out for s in self.slots}, fold=cfg.fold_ledger)
        self.plan = plan
        # Residuals of merged weights (see merge.add_delta_), made at a module's first merge.
        self.residuals: dict[str, torch.Tensor] = {}
        # config.merge_residual, unless a state saved under an older meaning of "auto" is replayed.
        self.merge_policy = cfg.merge_residual
        # Quantized base layers are never written to: their merged rounds run beside them.
        self.side_paths: dict[str, LowRankSidePath] = {
            s.name: LowRankSidePath(s.lora.get_base_layer()) for s in self.slots if is_quantized(s.base_weight)
        }
        if cfg.fold_ledger and self.side_paths:
            raise ValueError(
                f"fold_ledger=True folds merges into a sum, but {next(iter(self.side_paths))!r} is quantized and "
                "keeps its merged factors beside it; use fold_ledger=False on a quantized model."
            )
        self.global_step = 0  # optimizer steps taken so far; the live round follows from it
        self._checked_optimizer: weakref.ref | None = None
        # Blocks picked by the gradient (layer_selection "gradient..."), by round; other rounds use the plan's draw.
        self.chosen_layers: dict[int, tuple[str, ...]] = {}
        self.sketcher: GradientSketcher | None = None
        if cfg.gradient_start or cfg.gradient_selection:
            embeddings = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
            self.sketcher = GradientSketcher(
                ((s.name, s.lora.get_base_layer()) for s in self.slots),
                {s.name: s.shape for s in self.slots},
                embeddings,
                cfg.rank,
                cfg.sketch_oversample,
                getattr(torch, cfg.sketch_input_dtype),
            )
        self._initialise(self.slots, round_index=0)
        self._activate(self.layers_of(0))
        self._arm_sketcher()
        if cfg.norm_penalty > 0:
            self.model.register_forward_hook(self._add_penalty_to_loss)

    # ------------------------------------------------------------------ public API
    def parameters(self) -> list[nn.Parameter]:
        """Every parameter the optimizer must hold: all booster factors that train (idle ones
        included, whose gradient stays None) and any ``modules_to_save``."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def round(self) -> int:
        """Index of the live round (derived from ``global_step`` by the plan)."""
        return self.plan.round_at(self.global_step)

    @property
    def live_slots(self) -> tuple[Slot, ...]:
        """The boosters of the live round."""
        return self._slots_of(self.round)

    def _slots_of(self, round_index: int) -> tuple[Slot, ...]:
        layers = set(self.layers_of(round_index))
        return tuple(s for s in self.slots if s.layer in layers)

    def layers_of(self, round_index: int) -> tuple[str, ...]:
        """The blocks ``round_index`` uses: chosen by the gradient when it was, else the plan's seeded draw."""
        return self.chosen_layers.get(round_index) or self.plan.layers(round_index)

    @property
    def merge_scaling(self) -> float:
        """The scale of a merged round's update: merge_scale * alpha / r (the live booster runs at alpha / r,
        ``config.lora_scaling``)."""
        return self.config.merge_scale * self.config.lora_scaling

    def set_total_steps(self, total_steps: int) -> None:
        """Tell the plan the run's length (places COLA's knots when only ``rounds`` is set)."""
        if self.global_step > 0 and total_steps != self.plan.total_steps and self.config.steps_per_round is None:
            raise RuntimeError(
                f"total_steps cannot change from {self.plan.total_steps} to {total_steps} after training started; "
                "it places the round ends."
            )
        self.plan = dataclasses.replace(self.plan, total_steps=total_steps)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Count one optimizer step; at the end of a round, merge it and start the next one.

        Call after ``optimizer.step()``. Returns True when this call ended a round.
        """
        self.check_optimizer(optimizer)
        live = self.round
        self.global_step += 1
        end = self.plan.round_end(live)
        ended = end is not None and self.global_step >= end
        if ended:
            self._change_round(optimizer, finished_round=live)
        elif self.global_step == 1 and self.config.gradient_start:
            self._restart_from_gradient(optimizer)
        self._arm_sketcher()
        return ended

    def penalty(self) -> torch.Tensor:
        """lambda * sum of ||A||^2 + ||B||^2 over the live booster's trainable factors."""
        lam = self.config.norm_penalty
        terms = [p.pow(2).sum() for s in self.live_slots for p in (s.A, s.B) if p.requires_grad]
        return lam * torch.stack(terms).sum() if terms else torch.zeros(())

    def lr_scheduler(
        self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, decay: str = "linear"
    ) -> torch.optim.lr_scheduler.LambdaLR:
        """A LambdaLR for a plain loop: linear warm-up, then ``decay`` over ``total_steps``, times the
        per-round jagged factor when ``config.lr_schedule == "per_round"``."""
        if self.plan.total_steps is None:
            self.set_total_steps(total_steps)
        return make_lr_scheduler(
            optimizer,
            self.plan,
            self.config.lr_schedule,
            self.config.round_warmup_steps,
            total_steps,
            warmup_steps,
            decay,
        )

    # ------------------------------------------------------------------ export and resume
    def save_adapter(self, path, rank: int | None = None, overwrite: bool = False):
        """Save everything learned so far (all merged rounds plus the live booster) as ONE standard
        PEFT LoRA adapter that plain ``PeftModel.from_pretrained(original_base, path)`` loads.

        The rank-r boosters of a module stack exactly into one LoRA of rank r * rounds (per-module
        ranks in ``rank_pattern``, scaling 1). With ``rank=k`` each module's total update is cut to its
        best rank-k approximation (truncated SVD), and ``loraboost.json`` records the relative
        Frobenius error per module and in total. Refuses a non-empty folder unless ``overwrite``.
        """
        return save_adapter(self, path, rank=rank, overwrite=overwrite)

    def save_merged(self, path, tokenizer=None, overwrite: bool = False):
        """Save a plain transformers model folder with every update merged (safetensors and config,
        and the tokenizer when given), loadable by ``AutoModel...from_pretrained`` without loraboost."""
        return save_merged(self, path, tokenizer=tokenizer, overwrite=overwrite)

    def state_dict(self) -> dict:
        """Everything needed to resume: ledger, live boosters, plan position (``{"meta", "tensors"}``)."""
        return booster_state(self)

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()`` output: call on a fresh Booster built on the original base model
        with the same config. Replays every merge in order, so the weights come back bit for bit; a
        state for another architecture, shape or target set is refused before anything changes."""
        check_compatible(self, state)
        meta, tensors = state["meta"], state["tensors"]
        self.merge_policy = merge_policy_of(meta, self.config)
        self.ledger.load_state(meta["ledger"], tensors)
        slots = {s.name: s for s in self.slots}
        # Replay every merge in order with the same fp32 arithmetic as training: bit-identical weights.
        for entry in self.ledger:  # a folded module has no entries left: its merged weight was saved whole
            slot = slots[entry.module]
            A, B = as_local_layout(entry.A, slot.A), as_local_layout(entry.B, slot.B)  # as during training
            self._apply_merge(slot, A, B, entry.scale, entry.round)
        for name in self.ledger.folded:  # replaying the sum would not round as the merges it replaced did
            slot = slots[name]
            slot.base_weight.copy_(as_local_layout(tensors[f"merged.{name}.weight"], slot.base_weight))
            if f"merged.{name}.residual" in tensors:
                residual = self._residual(slot)
                residual.copy_(as_local_layout(tensors[f"merged.{name}.residual"], residual))
        for name, param in extra_trainables(self):
            param.copy_(as_local_layout(tensors[f"trainable.{name}"], param))
        for slot in self.slots:
            slot.A.copy_(as_local_layout(tensors[f"live.{slot.name}.A"], slot.A))
            slot.B.copy_(as_local_layout(tensors[f"live.{slot.name}.B"], slot.B))
        if meta["total_steps"] is not None:
            self.set_total_steps(meta["total_steps"])
        self.global_step = meta["global_step"]
        self.chosen_layers = {int(r): tuple(layers) for r, layers in meta.get("chosen_layers", {}).items()}
        if self.sketcher is not None:
            # The test matrices follow from (seed, round); what the window folded in so far comes from the state.
            self.sketcher.stop()
            self._arm_sketcher()
            for name, batches in meta.get("sketch_batches", {}).items():
                sketch = self.sketcher.sketches[name]
                sketch.Y.copy_(tensors[f"sketch.{name}.Y"])
                sketch.Z.copy_(tensors[f"sketch.{name}.Z"])
                sketch.batches = batches
        self._freeze_factors()
        self._activate(self.layers_of(self.round))

    def save_state(self, path) -> None:
        """Write ``state_dict()`` to one safetensors file, atomically."""
        save_state_file(self, path)

    def load_state(self, path) -> None:
        """Read a file written by ``save_state`` and ``load_state_dict`` it."""
        self.load_state_dict(load_state_file(path))

    # ------------------------------------------------------------------ round change
    @torch.no_grad()
    def _change_round(self, optimizer: torch.optim.Optimizer, finished_round: int) -> None:
        finished = self._slots_of(finished_round)
        scale = self.merge_scaling
        kept = self.config.persistent_rank
        for slot in finished:
            A, B = chain_part(slot.A, slot.B, kept)  # the whole booster unless part of it persists
            self._apply_merge(slot, A, B, scale, finished_round)
            self.ledger.append(finished_round, slot.name, scale, A, B)
        if kept:
            generator = round_generator(self.config.seed, finished_round + 1, "init")
            for slot in finished:
                restart_chain_part(slot.A, slot.B, kept, generator)
        else:
            self._initialise(finished, finished_round + 1)
        reset_optimizer_state(
            optimizer, [p for s in finished for p in (s.A, s.B)], self.config.optimizer_reset, self.config.prune_ratio
        )
        if self.sketcher is not None:
            tops = self._read_sketch()
            if self.config.gradient_selection:
                self.chosen_layers[finished_round + 1] = self._select_layers(tops, finished_round + 1)
            if self.config.gradient_start:
                starting = self._slots_of(finished_round + 1)
                self._initialise_from_gradient(starting, tops)
                # Idle slots that start now carry state from their last round; their factors are new.
                reset_optimizer_state(
                    optimizer,
                    [p for s in starting if s not in finished for p in (s.A, s.B)],
                    self.config.optimizer_reset,
                    self.config.prune_ratio,
                )
        self._activate(self.layers_of(finished_round + 1))

    # ------------------------------------------------------------------ gradient-boosted rounds
    def _sketch_window(self) -> bool:
        """Whether the next optimizer step's gradient is sketched: round 0's first step (when boosters start
        from the gradient) and the last ``sketch_steps`` steps of every round that is followed by another."""
        if self.config.gradient_start and self.global_step == 0:
            return True
        if self.plan.steps_per_round is None and self.plan.total_steps is None:
            return False  # COLA's knots are placed once the run's length is known (BoostCallback tells it)
        end = self.plan.round_end(self.round)
        return end is not None and end - self.config.sketch_steps <= self.global_step < end

    def _sketched_names(self) -> list[str]:
        """Every module when the gradient picks the next blocks; else those of the round the sketch starts."""
        if self.config.gradient_selection:
            return [s.name for s in self.slots]
        starting = self.round if self.global_step == 0 else self.round + 1
        return [s.name for s in self._slots_of(starting)]

    def _arm_sketcher(self) -> None:
        if self.sketcher is None:
            return
        if self._sketch_window():
            if not self.sketcher.armed:
                # A live booster's trained A keeps its input for the backward (PEFT: no dropout module at 0).
                saved = [sl.name for sl in self.live_slots if sl.A.requires_grad] if self.config.dropout == 0 else []
                self.sketcher.start(self.config.seed, self.round, self._sketched_names(), saved)
        elif self.sketcher.armed:
            self.sketcher.stop()

    def _read_sketch(self) -> dict[str, TopSingular]:
        """Each sketched module's top singular triplets (of the gradient summed over ranks)."""
        self.sketcher.stop()
        self.sketcher.all_reduce()
        if self.sketcher.sketches and not any(sk.batches for sk in self.sketcher.sketches.values()):
            warnings.warn(
                f"loraboost: round {self.round}'s gradient sketch saw no training step (the sketch reads forwards "
                "in train mode with gradients on; call model.train() in a custom loop), so its boosters start "
                "and its blocks are drawn as with round_init and layer_selection 'random'.",
                stacklevel=3,
            )
        return {name: sk.top(self.config.rank) for name, sk in self.sketcher.sketches.items() if sk.batches}

    @torch.no_grad()
    def _restart_from_gradient(self, optimizer: torch.optim.Optimizer) -> None:
        """Round 0 has no earlier round to sketch: its first step is sketched, and its boosters restart from it
        (that step's tiny update is dropped with its optimizer state)."""
        live = self.live_slots
        self._initialise(live, 0)
        self._initialise_from_gradient(live, self._read_sketch())
        reset_optimizer_state(optimizer, [p for s in live for p in (s.A, s.B)], "reset")

    @torch.no_grad()
    def _initialise_from_gradient(self, slots: tuple[Slot, ...], tops: dict[str, TopSingular]) -> None:
        """Each slot's factors from its gradient's top triplets (``round_init``, see ``factors_from_gradient``);
        a module that got no gradient keeps its random start."""
        cfg = self.config
        for slot in slots:
            factors = None
            if slot.name in tops:
                factors = factors_from_gradient(
                    tops[slot.name], cfg.rank, slot.shape, cfg.round_init, cfg.gradient_step_gamma, self.frozen(slot)
                )
            if factors is not None:
                slot.A.copy_(as_local_layout(factors[0], slot.A))
                slot.B.copy_(as_local_layout(factors[1], slot.B))

    def _select_layers(self, tops: dict[str, TopSingular], round_index: int) -> tuple[str, ...]:
        """The blocks of ``round_index`` by their gradient gap (each block's summed top singular value), as
        ``layer_selection`` says: in proportion to the gaps, or the largest with forced visits."""
        keys, count = self.plan.layer_keys, self.plan.layers_per_round
        gaps = torch.zeros(len(keys), dtype=torch.float64)
        index = {key: i for i, key in enumerate(keys)}
        for slot in self.slots:
            if slot.name in tops:
                gaps[index[slot.layer]] += float(tops[slot.name].values[0])
        if not bool((gaps > 0).sum() >= count):
            return self.plan.layers(round_index)  # too little gradient seen to choose: the plan's draw
        if self.config.layer_selection == "gradient-topk":
            chosen = top_k_with_visits(gaps, count, self._idle_rounds(round_index))
        else:
            chosen = proportional(gaps, count, round_generator(self.config.seed, round_index, "select"))
        return tuple(keys[i] for i in chosen)

    def _idle_rounds(self, round_index: int) -> list[int]:
        """Per block (in ``plan.layer_keys`` order), the rounds since it last trained before ``round_index``."""
        idle = {}
        for earlier in range(round_index - 1, -1, -1):
            for key in self.layers_of(earlier):
                idle.setdefault(key, round_index - earlier)
            if len(idle) == len(self.plan.layer_keys):
                break
        return [idle.get(key, round_index + 1) for key in self.plan.layer_keys]

    @torch.no_grad()
    def _apply_merge(self, slot: Slot, A: torch.Tensor, B: torch.Tensor, scale: float, round_index: int) -> None:
        """Put one booster's update ``scale * B @ A`` into ``slot``'s base: added in fp32 into the weight
        (compensated when it has a residual), or stacked on the side path of a quantized layer.
        Used by training and by resuming alike, so a replayed run is bit-identical."""
        side = self.side_paths.get(slot.name)
        if side is not None:
            side.append(A, B, scale)
        else:
            # Stochastic rounding draws from (seed, round, module): every rank and every replay rounds alike.
            weight = slot.base_weight
            generator = None
            if rounds_stochastically(self.merge_policy, weight.dtype):
                generator = round_generator(self.config.seed, round_index, f"merge:{slot.name}")
            add_delta_(weight, lora_delta(A, B, scale, slot.fan_in_fan_out), self._residual(slot), generator)

    def _residual(self, slot: Slot) -> torch.Tensor | None:
        """The residual of ``slot``'s weight (in ``merge_residual_dtype``), created on first use when the
        policy asks for one."""
        weight = slot.base_weight
        if slot.name not in self.residuals and needs_residual(self.merge_policy, weight.dtype):
            dtype = getattr(torch, self.config.merge_residual_dtype)
            self.residuals[slot.name] = torch.zeros_like(weight, dtype=dtype)  # sharded like the weight
        return self.residuals.get(slot.name)

    def merged_weight(self, slot: Slot) -> torch.Tensor:
        """``slot``'s base weight with every merge in full (to its residual's precision): the weight plus its
        residual, in fp32."""
        weight = slot.base_weight.detach().float()
        residual = self.residuals.get(slot.name)
        return weight if residual is None else weight + residual

    @torch.no_grad()
    def _initialise(self, slots: tuple[Slot, ...], round_index: int) -> None:
        """Fresh factors, in place: the product is zero (the model is unchanged) but its gradient is not.

        A gets PEFT's default (kaiming-uniform, the nn.Linear init) and B zeros; with frozen_factor="B"
        the roles swap. Drawn from a generator of (seed, round) so every rank draws the same.
        """
        generator = round_generator(self.config.seed, round_index, "init")
        for slot in slots:
            random, zero = (slot.B, slot.A) if self.frozen(slot) == "B" else (slot.A, slot.B)
            bound = 1.0 / math.sqrt(slot.A.shape[1])  # kaiming_uniform_(a=sqrt(5)) on (r, in)
            sample = torch.empty(random.shape, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
            random.copy_(as_local_layout(sample, random))
            zero.zero_()

    def _freeze_factors(self) -> None:
        """RAC-LoRA's frozen factor never trains: frozen for the whole run, never toggled per round.
        Re-applied after loading a state, in case something in between called PEFT's ``set_adapter``,
        which switches ``requires_grad`` on for every factor of the active adapter."""
        for slot in self.slots:
            slot.A.requires_grad_(self.frozen(slot) != "A")
            slot.B.requires_grad_(self.frozen(slot) != "B")

    def frozen(self, slot: Slot) -> str | None:
        """The factor of ``slot`` that never trains (``frozen_factor``): ``A``, ``B`` or None; ``shorter`` is the
        one on the weight's shorter side, A (r x in) when out >= in, else B (out x r), as GaLore projects, and
        ``longer`` the other one (on a square weight, B)."""
        frozen = self.config.frozen_factor
        if frozen in ("shorter", "longer"):
            out_features, in_features = slot.shape
            on_the_in_side = out_features >= in_features if frozen == "shorter" else out_features < in_features
            return "A" if on_the_in_side else "B"
        return None if frozen == "none" else frozen

    def _activate(self, layers: tuple[str, ...]) -> None:
        """Run the adapters of ``layers`` and skip all others in the forward pass.

        Skipping is done with PEFT's per-layer disable flag set directly, not ``enable_adapters``,
        which would also switch ``requires_grad`` off: an optimizer or DDP built once from the
        parameters requiring grad would then never train later rounds.
        Skipped adapters do no compute and get no gradient (None), which optimizers skip.
        """
        chosen = set(layers)
        for slot in self.slots:
            slot.lora._disable_adapters = slot.layer not in chosen

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Refuse an optimizer that does not hold every booster parameter (later rounds would train nothing)."""
        if self._checked_optimizer is not None and self._checked_optimizer() is optimizer:
            return
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        names = {id(p): n for n, p in self.model.named_parameters()}
        missing = [names.get(id(p), "?") for p in self.parameters() if id(p) not in held]
        if missing:
            raise ValueError(
                f"the optimizer passed to step() does not hold {len(missing)} of the booster's "
                f"{len(self.parameters())} trainable parameters (e.g. {missing[0]!r}); build it from "
                "booster.parameters() after creating the Booster, or later rounds would silently train nothing."
            )
        self._checked_optimizer = weakref.ref(optimizer)

    def _add_penalty_to_loss(self, module, args, output):
        if module.training and torch.is_grad_enabled() and getattr(output, "loss", None) is not None:
            output.loss = output.loss + self.penalty().to(output.loss.device)
        return output


def _count_layers(layers_per_round: int | float | None, n_layers: int) -> int:
    """L_s as a count: None is every layer, a fraction is rounded (at least 1)."""
    if layers_per_round is None:
        return n_layers
    if isinstance(layers_per_round, float):
        return max(1, round(layers_per_round * n_layers))
    if layers_per_round > n_layers:
        raise ValueError(
            f"layers_per_round={layers_per_round} is larger than the model's {n_layers} layers; "
            f"use at most {n_layers}, or a fraction in (0, 1]."
        )
    return layers_per_round
