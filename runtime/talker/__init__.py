"""The Talker (codec-token decoder on the shared engine) and its per-request inputs."""
from .inputs import TalkerInputs, TalkerPrompt
from .talker import MAX_CODES, Talker

__all__ = ["Talker", "TalkerInputs", "TalkerPrompt", "MAX_CODES"]
