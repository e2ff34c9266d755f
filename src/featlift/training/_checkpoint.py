"""Training checkpoints: written atomically by rank 0 with every process's RNG states
(:func:`save_checkpoint`), checked to be complete and to belong to the run before anything is restored
(:func:`resume`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .._atomic import atomic_write
from .._distributed import Dist
from ..errors import CheckpointError
from ..modeling.uplift import UPLiFT
from ._sampling import rng_state

__all__ = ["CHECKPOINT_KEYS", "CHECKPOINT_NAME", "resume", "save_checkpoint"]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_KEYS = ("model", "optimizer", "step", "seed", "batch_size", "world", "global_batch", "total_steps", "rng")


def save_checkpoint(path: Path, model: UPLiFT, optimizer, step: int, settings: dict, d: Dist) -> None:
    """Collective: every process hands in its RNG states; rank 0 writes ``path`` atomically. ``settings``
    are the run's seed and batch layout (checked on resume)."""
    states = d.gather(rng_state())
    if not d.main:
        return
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, **settings, "rng": states}
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    logger.info("checkpoint at step %d written to %s", step, path)


def _fix(path: Path) -> str:
    return f"delete {path} to start over, or run without --resume (training then starts again from step 0)"


def _load(path: Path, settings: dict) -> dict:
    """The checkpoint at ``path``, checked to be complete and to belong to a run with ``settings``."""
    fix = _fix(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for broken files
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt: {reason}); {fix}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a featlift training checkpoint; {fix}")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"{path} lacks {', '.join(missing)}: it is not a complete featlift training checkpoint "
            f"(or one written by an older featlift); {fix}"
        )
    if state["seed"] != settings["seed"]:
        raise CheckpointError(
            f"--resume: {path} belongs to a run with seed {state['seed']}, but this run has seed {settings['seed']}; "
            f"pass --seed {state['seed']} to continue it, or give a new --out folder for a new run"
        )
    if state["global_batch"] != settings["global_batch"]:
        raise CheckpointError(
            f"--resume: {path} belongs to a run with a global batch of {state['global_batch']} "
            f"({state['batch_size']} per process x {state['world']} processes), but this run's is "
            f"{settings['global_batch']} ({settings['batch_size']} x {settings['world']}); resume with the same "
            "global batch (--batch-size x processes), or give a new --out folder for a new run"
        )
    if int(state["step"]) > settings["total_steps"]:
        raise CheckpointError(
            f"--resume: {path} is at step {state['step']}, past this run's {settings['total_steps']} steps; "
            f"ask for at least {state['step']} steps"
        )
    return state


def _restore(path: Path, state: dict, model: UPLiFT, optimizer) -> None:
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path} does not fit this run's model (written with another --base or --backbone?); "
            f"{_fix(path)}. Details: {err}"
        ) from err


def resume(path: Path, settings: dict, model: UPLiFT, optimizer, d: Dist) -> tuple[int, list[dict] | None]:
    """Restore ``model`` and ``optimizer`` from the checkpoint at ``path``; returns (step, every process's
    global RNG states, or None when the checkpoint was written by another number of processes).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        CheckpointError: a corrupt or incomplete checkpoint, one from a run with another seed or global
            batch, or one that does not fit ``model``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}; run without --resume to start from step 0")
    state = _load(path, settings)
    _restore(path, state, model, optimizer)
    start = int(state["step"])
    rng_states = state["rng"]
    if len(rng_states) != d.world:
        logger.warning(
            "%s was written by %d process(es), this run has %d: the global RNG states are not restored "
            "(featlift's own random draws derive from the seed and step and are unaffected)",
            path,
            len(rng_states),
            d.world,
        )
        rng_states = None
    logger.info("resumed from step %d", start)
    return start, rng_states
