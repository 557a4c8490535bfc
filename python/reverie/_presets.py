"""Field-name presets: a padded TrajectoryBuffer batch renamed for the loss code of verl,
TRL and OpenRLHF, and per-item reductions of ragged fields (scores for priorities).

Roles: each preset reads the batch's fields by role; the default field of each role is the
name on the left (override any with keyword arguments, e.g. ``logprobs="old_logp"``):

    prompt       prompt token ids, group "prompt" (left-padded)
    response     response token ids, group "response" (right-padded)
    logprobs     per-token log-probabilities of the response under the behaviour policy
    advantages   per-token advantages of the response (TRL: one per sequence, see below)
    loss_mask    optional per-token 0/1 of the response; default the response's attention mask

verl (``DataProto.batch``): prompts, responses, input_ids (prompt then response),
attention_mask, position_ids (from the mask), response_mask, old_log_probs, advantages.
TRL (GRPOTrainer's inputs to its loss): prompt_ids, prompt_mask, completion_ids,
completion_mask, old_per_token_logps, advantages ([B]: the sequence's mean advantage).
OpenRLHF (``Experience``): sequences (prompt then response), attention_mask, action_mask,
action_log_probs, advantages.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

ROLES = ("prompt", "response", "logprobs", "advantages", "loss_mask")
PRESETS = ("verl", "trl", "openrlhf")


def for_trainer(batch: Any, preset: str, **roles: Optional[str]) -> Dict[str, torch.Tensor]:
    """The tensors of a padded batch (``layout="padded"``, groups "prompt" and "response")
    under `preset`'s names. ``roles`` name the batch's field of each role (module doc)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; the roles are {', '.join(ROLES)}")
    if getattr(batch, "layout", None) != "padded":
        raise ValueError("presets take a padded batch: sample(..., layout='padded')")
    if "prompt" not in batch.groups or "response" not in batch.groups:
        raise ValueError(f"presets need the length groups 'prompt' and 'response'; this batch has {list(batch.groups)}")
    name = {role: roles.get(role, role) for role in ROLES}
    for role in ("prompt", "response", "logprobs", "advantages"):
        if name[role] not in batch:
            raise ValueError(f"preset {preset!r}: role {role!r} reads field '{name[role]}', which the batch does not "
                             f"have (fields: {', '.join(batch)}); pass {role}='<field>'")
    prompt, response = batch[name["prompt"]], batch[name["response"]]
    prompt_mask = batch.groups["prompt"].attention_mask
    response_mask = batch.groups["response"].attention_mask
    loss_mask = response_mask if roles.get("loss_mask") is None else batch[name["loss_mask"]]
    logprobs, advantages = batch[name["logprobs"]], batch[name["advantages"]]
    if preset == "verl":
        mask = torch.cat([prompt_mask, response_mask], dim=1)
        return {"prompts": prompt, "responses": response, "input_ids": torch.cat([prompt, response], dim=1),
                "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp_(min=0),
                "response_mask": loss_mask, "old_log_probs": logprobs, "advantages": advantages}
    if preset == "trl":
        per_seq = per_item_padded(advantages, response_mask, "mean") if advantages.dim() == 2 else advantages
        return {"prompt_ids": prompt, "prompt_mask": prompt_mask, "completion_ids": response,
                "completion_mask": loss_mask, "old_per_token_logps": logprobs, "advantages": per_seq}
    return {"sequences": torch.cat([prompt, response], dim=1),
            "attention_mask": torch.cat([prompt_mask, response_mask], dim=1), "action_mask": loss_mask,
            "action_log_probs": logprobs, "advantages": advantages}


def per_item_padded(values: torch.Tensor, mask: torch.Tensor, reduce: str) -> torch.Tensor:
    """A [B, T] field reduced over its valid tokens (mask 1): "sum", "mean", "max" or "min"."""
    m = mask.to(values.dtype)
    if reduce == "sum":
        return (values * m).sum(1)
    if reduce == "mean":
        return (values * m).sum(1) / m.sum(1).clamp(min=1)
    if reduce == "max":
        return values.masked_fill(mask == 0, float("-inf")).amax(1)
    if reduce == "min":
        return values.masked_fill(mask == 0, float("inf")).amin(1)
    raise ValueError(f"reduce must be 'sum', 'mean', 'max' or 'min', got {reduce!r}")


def per_item_packed(values: torch.Tensor, cu_seqlens: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    """A packed [N_tok] field reduced per item (cu_seqlens [n + 1], padding tokens after
    cu_seqlens[n] ignored): "sum", "mean", "max" or "min" (empty items: 0, 0, -inf, inf)."""
    cu = cu_seqlens[: n + 1].to(torch.int64)
    lengths = cu[1:] - cu[:-1]
    owner = torch.repeat_interleave(torch.arange(n), lengths)
    v = values[: int(cu[-1])]
    if reduce in ("sum", "mean"):
        out = torch.zeros(n, dtype=v.dtype).index_add_(0, owner, v)
        return out / lengths.clamp(min=1).to(v.dtype) if reduce == "mean" else out
    if reduce in ("max", "min"):
        start = float("-inf") if reduce == "max" else float("inf")
        return torch.full((n,), start, dtype=v.dtype).scatter_reduce_(0, owner, v, "amax" if reduce == "max" else "amin")
    raise ValueError(f"reduce must be 'sum', 'mean', 'max' or 'min', got {reduce!r}")
