"""The app benchmarks/live.py serves: clipia_tasks.contrib.starlette's ProgressViews only."""

from starlette.applications import Starlette

from clipia_tasks.contrib.starlette import ProgressViews

progress = ProgressViews()
app = Starlette()
app.add_route("/generations/{request_id}/events", progress.events)
app.add_route("/generations/{request_id}/snapshot", progress.snapshot)
