"""Flask view for Clipia webhooks::

    from clipia_tasks.contrib.flask import clipia_webhook

    app.add_url_rule("/hooks/clipia", view_func=clipia_webhook, methods=["POST"])
"""

from __future__ import annotations

from typing import Any

from flask import jsonify, request

from ..webhooks import webhook_response

__all__ = ["clipia_webhook"]


def clipia_webhook() -> Any:
    status, body = webhook_response(dict(request.headers), request.get_data())
    return jsonify(body), status
