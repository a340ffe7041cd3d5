"""The dashboard's settings: the analysis config of the sidebar's values, its cache key, and
whether it is quick enough to run on every change; and the page's line about a failure.

Nothing here calls Streamlit or imports torch.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from app.model_sources import ModelChoice
from fvit_core.analysis.config import AnalysisConfig
from fvit_core.errors import is_out_of_memory, is_user_error, one_line
from fvit_core.models import MODEL_PAIRS
from fvit_core.protocol.settings import flat_names

log = logging.getLogger(__name__)

# Settings that take long enough that the dashboard asks for a click instead of rerunning on
# every slider move.
MAX_INTERACTIVE_SAMPLES = 128
MAX_INTERACTIVE_STEPS = 50
SLOW_ATTACKS: dict[str, str] = {
    "eot_dds": "the adaptive attack back-propagates through the denoiser",
    "autoattack": "AutoAttack runs an ensemble of attacks",
}


def error_message(what: str, exc: BaseException) -> str:
    """The page's line about a failure. A user's error (an engine FViTError, a file problem, out
    of memory) is shown with its message; anything else is a bug: "internal error, please report"
    and the exception's type, never its traceback (the server log has it)."""
    if not is_user_error(exc):
        log.error("%s: internal error", what, exc_info=exc)
    if is_user_error(exc):
        hint = "out of memory (use fewer samples or a smaller batch): " if is_out_of_memory(exc) else ""
        return f"{what}: {hint}{one_line(exc)}"
    return f"{what}: internal error, please report it ({type(exc).__name__})."


def pair_cost_seconds(config: AnalysisConfig) -> float | None:
    """Rough seconds of one analysis of a real-size named pair on a CPU (None for quick pairs):
    the clean and the attacked estimate, N samples each, at the measured cost per sample."""
    spec = MODEL_PAIRS.get(config.models.pair)
    if spec is None or spec.cpu_seconds_per_sample is None or not str(config.models.device).startswith("cpu"):
        return None
    return 2 * config.sampling.n_samples * spec.cpu_seconds_per_sample


def settings_key(digest: str, config: AnalysisConfig) -> str:
    """The cache key of one analysis: image digest + every setting (canonical JSON)."""
    return f"{digest}|{json.dumps(config.to_dict(), sort_keys=True, default=str)}"


def expensive_reason(config: AnalysisConfig) -> str | None:
    """Why these settings should wait for a click (None when they are quick enough)."""
    reasons = []
    n, attack = config.sampling.n_samples, config.attack
    if n > MAX_INTERACTIVE_SAMPLES:
        reasons.append(f"{n} samples (> {MAX_INTERACTIVE_SAMPLES})")
    if attack.name in SLOW_ATTACKS:
        reasons.append(SLOW_ATTACKS[attack.name])
    steps = attack.params.get("steps", attack.steps)
    if isinstance(steps, int) and steps > MAX_INTERACTIVE_STEPS:
        reasons.append(f"{steps} attack steps (> {MAX_INTERACTIVE_STEPS})")
    queries = attack.params.get("n_queries")
    if isinstance(queries, int) and queries > 1000:
        reasons.append(f"{queries} queries")
    if config.smoothing.mode == "multistep":
        reasons.append("multi-step denoising")
    cost = pair_cost_seconds(config)
    if cost is not None:
        reasons.append(f"real-size models on a CPU: about {cost / 60:.0f} min")
    if config.sensitivity.enabled:
        reasons.append(f"neighbourhood sensitivity ({config.sensitivity.samples} x {n} samples)")
    return "; ".join(reasons) or None


def build_config(settings: dict[str, Any], attack_values: dict[str, Any], models: ModelChoice) -> AnalysisConfig:
    """The :class:`AnalysisConfig` of the sidebar's values (ValueError if a value is invalid)."""
    known = set(flat_names(AnalysisConfig))
    fields = {name: value for name, value in settings.items() if name in known}
    fields.update(models.config_fields())
    fields["attack_params"] = dict(attack_values)
    fields["eps"] = fields["steps"] = None  # everything is in attack_params
    return AnalysisConfig.from_dict(fields)
