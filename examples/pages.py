"""The two HTML pages every example serves: the prompt form and a generation's live view.

Plain strings, no template engine, so the three apps share them unchanged:

- ``GET /`` (:func:`index_page`): a prompt form. Its script POSTs JSON to
  ``/generations`` with ``"live_progress": true`` (and the simulator's ``sim`` script
  from the "Simulator script" box, if filled), then opens the generation's view.
- ``GET /generations/<id>/view`` (:func:`view_page`): the widget's markup for one
  request, followed live by ``/clipia/progress.js`` (``clipia_tasks/static``) over
  ``/generations/<id>/events``, with ``/generations/<id>/snapshot`` as its fallback.

In your app these are templates; what matters is the ``data-clipia-*`` markup and the
script tag.
"""

from __future__ import annotations

from html import escape

from clipia_tasks.nouns import check_request_id

__all__ = ["index_page", "view_page"]

_STYLE = """
  body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto;
         padding: 0 1rem; }
  textarea { width: 100%; box-sizing: border-box; }
  progress { width: 100%; }
  [data-clipia-output] img, [data-clipia-output] video { max-width: 100%; }
  .clipia-error, [role=alert] { color: #b00020; }
"""

_INDEX = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>New generation</title>
<style>{style}</style>
</head>
<body>
<h1>New generation</h1>
<form id="generate">
  <p><label for="prompt">Prompt</label><br>
     <textarea id="prompt" name="prompt" rows="3" required>a cat in a spacesuit</textarea></p>
  <details>
    <summary>Simulator script (JSON, optional)</summary>
    <p><textarea id="sim" name="sim" rows="3"
        placeholder='{{"queue_s": 1, "run_s": 5, "progress": "linear"}}'></textarea></p>
  </details>
  <p><button type="submit">Generate</button></p>
  <p id="error" role="alert"></p>
</form>
<script>
document.getElementById("generate").addEventListener("submit", async (event) => {{
  event.preventDefault();
  const form = event.currentTarget;
  const error = document.getElementById("error");
  const button = form.querySelector("button");
  error.textContent = "";
  const body = {{prompt: form.elements.prompt.value, live_progress: true}};
  const sim = form.elements.sim.value.trim();
  if (sim) {{
    try {{ body.sim = JSON.parse(sim); }}
    catch (e) {{ error.textContent = "The simulator script is not JSON: " + e.message; return; }}
  }}
  button.disabled = true;
  try {{
    const response = await fetch("/generations", {{
      method: "POST", headers: {{"Content-Type": "application/json"}}, body: JSON.stringify(body),
    }});
    const answer = await response.json().catch(() => ({{}}));
    if (!response.ok || !answer.request_id) {{
      const why = answer.error || answer.detail || response.status;
      throw new Error(typeof why === "string" ? why : JSON.stringify(why));
    }}
    location = "/generations/" + encodeURIComponent(answer.request_id) + "/view";
  }} catch (e) {{
    error.textContent = "Could not start the generation: " + e.message;
    button.disabled = false;
  }}
}});
</script>
</body>
</html>
"""

_VIEW = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Generation {rid}</title>
<style>{style}</style>
</head>
<body>
<h1>Generation</h1>
<p><code>{rid}</code></p>
<div data-clipia-events="/generations/{rid}/events" data-clipia-snapshot="/generations/{rid}/snapshot">
  <p data-clipia-status aria-live="polite">Connecting…</p>
  <progress data-clipia-progress max="100"></progress>
  <p data-clipia-eta></p>
  <div data-clipia-output></div>
</div>
<script src="/clipia/progress.js" defer></script>
<p><a href="/">New generation</a></p>
</body>
</html>
"""  # noqa: E501  (the widget's markup, one line as documented)


def index_page() -> str:
    """``GET /``: the prompt form."""
    return _INDEX.format(style=_STYLE)


def view_page(request_id: str) -> str | None:
    """``GET /generations/<id>/view``: the live view, or ``None`` (answer 404) for a non-UUID."""
    try:
        rid = check_request_id(request_id)
    except ValueError:
        return None
    # A canonical UUID has nothing to escape; escaping anyway keeps the habit.
    return _VIEW.format(rid=escape(rid), style=_STYLE)
