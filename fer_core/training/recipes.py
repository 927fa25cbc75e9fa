"""Training recipes: named stage lists in one registry, or stages written out, and the rule for
``--epochs`` / ``--lr``.

``--epochs`` and ``--lr`` set the single stage of the ``scratch`` recipe. A named multi-stage
recipe fixes its own epochs and learning rates, so giving ``--epochs`` or ``--lr`` with it is an
error (it used to be ignored without a word); to change them, write the stages out:
``--recipe head:1:1e-3,all:2:1e-4`` (``TRAINABLE:EPOCHS:LR``, trainable ``head``, ``all`` or
``top:N``).
"""

from __future__ import annotations

from fer_core.errors import InvalidArgument
from fer_core.training.trainer import GRADUAL_UNFREEZING_STAGES, HSEMOTION_STAGES, Stage, describe_stages

#: Named recipes: their stages (``scratch``: one stage over all layers, from ``--epochs``/``--lr``).
RECIPES: dict[str, tuple[Stage, ...] | None] = {
    "scratch": None,
    "hsemotion": HSEMOTION_STAGES,
    "gradual": GRADUAL_UNFREEZING_STAGES,
}
#: The recipe when none is named: fine-tuning (HSEmotion's) from ``--init`` weights, else scratch.
DEFAULT_WITH_INIT = "hsemotion"
DEFAULT_WITHOUT_INIT = "scratch"


def parse_stages(text: str) -> tuple[Stage, ...]:
    """Stages from ``TRAINABLE:EPOCHS:LR[,...]`` (``top:2:3:1e-4`` is trainable ``top:2``)."""
    stages = []
    for part in text.split(","):
        trainable, _, rest = part.strip().rpartition(":")
        trainable, _, epochs = trainable.rpartition(":")
        try:
            numbers = int(epochs), float(rest)
        except ValueError:
            raise InvalidArgument(f"--recipe {text!r}: expected one of {list(RECIPES)} or stages TRAINABLE:EPOCHS:LR,"
                                  f"... such as head:1:1e-3,all:2:1e-4; {part!r} is neither") from None
        stages.append(Stage(*numbers, trainable))
    return tuple(stages)


def recipe_stages(recipe: str | None, epochs: int | None, lr: float | None, has_init: bool, *,
                  default_epochs: int, default_lr: float) -> tuple[str, tuple[Stage, ...]]:
    """The recipe's name and stages. ``epochs`` / ``lr`` (None when not given) set the ``scratch``
    stage (default ``default_epochs`` at ``default_lr``); given with any other recipe they are a
    :class:`InvalidArgument` that says how to change that recipe's stages instead."""
    name = recipe or (DEFAULT_WITH_INIT if has_init else DEFAULT_WITHOUT_INIT)
    if name == "scratch":
        return name, (Stage(default_epochs if epochs is None else epochs, default_lr if lr is None else lr, "all"),)
    stages = RECIPES[name] if name in RECIPES else parse_stages(name)
    given = [flag for flag, value in (("--epochs", epochs), ("--lr", lr)) if value is not None]
    if given:
        implied = "" if recipe else " (the default with --init)"
        verb = "set" if len(given) > 1 else "sets"
        raise InvalidArgument(f"{' and '.join(given)} {verb} the scratch recipe only; recipe {name}{implied} "
                              f"trains {describe_stages(stages)}. Leave {' and '.join(given)} out, or write the stages "
                              f"you want: --recipe TRAINABLE:EPOCHS:LR,... (e.g. head:1:1e-3,all:2:1e-4)")
    return name, stages
