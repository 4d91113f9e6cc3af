"""The pretraining methods the comparison tables need: which heads train and which transforms make the task."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """What a pretraining method trains: its transform policy (None: the configured restoration policy) and heads."""

    policy: str | None
    restoration: bool
    classification: bool


# `scratch` (random initialisation) needs no pretraining, so it is not a method here.
METHODS: dict[str, Method] = {
    "models_genesis": Method(None, restoration=True, classification=False),
    "self_classification": Method("identity", restoration=False, classification=True),
    "semantic_genesis": Method(None, restoration=True, classification=True),
    "inpainting": Method("inpainting", restoration=True, classification=False),
    "inpainting_semantics": Method("inpainting", restoration=True, classification=True),
    "patch_shuffling": Method("patch_shuffling", restoration=True, classification=False),
    "patch_shuffling_semantics": Method("patch_shuffling", restoration=True, classification=True),
}
