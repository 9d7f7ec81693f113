"""FastAPI example: submit with a Clipia webhook, progress endpoint, the webhook bridge."""
