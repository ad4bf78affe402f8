"""TASKS: the registry of task-level checks, keyed by `Entry.task` (corpus.py): the vision tasks (tasks_vision.py)
and the audio and face-detection ones (tasks_audio.py), with the interface described in harness.py."""
from __future__ import annotations

from realmodels import tasks_audio, tasks_vision

TASKS: dict = {**tasks_vision.TASKS, **tasks_audio.TASKS}
