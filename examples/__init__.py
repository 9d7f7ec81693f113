"""Minimal Django, Flask and FastAPI apps using clipia_tasks (see each folder's README)."""
