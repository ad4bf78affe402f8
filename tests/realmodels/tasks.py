"""TASKS: the registry of task-level checks, keyed by `Entry.task` (corpus.py); the vision tasks (tasks_vision.py)
and the audio ones (tasks_audio.py) with the interface described in harness.py."""
from __future__ import annotations

from realmodels import tasks_vision

try:
    from realmodels import tasks_audio
except ModuleNotFoundError as e:  # tasks_audio.py not written yet; any other import error is real
    if e.name != "realmodels.tasks_audio":
        raise
    tasks_audio = None

TASKS: dict = {**tasks_vision.TASKS, **getattr(tasks_audio, "TASKS", {})}
