"""The real-model corpus (corpus.py) and its task-level checks (tasks_*.py); see corpus.py."""
