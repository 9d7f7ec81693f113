/*
 * clipia-progress.js: a Clipia generation request's live progress, in the browser.
 * Plain ES2017, no dependencies, no build step; the example apps serve it as
 * /clipia/progress.js. It follows every element with data-clipia-events (or only
 * data-clipia-snapshot) on DOMContentLoaded, and one added later with
 * window.ClipiaProgress.follow(element), which returns {close()}:
 *
 *   <div data-clipia-events="/generations/ID/events"
 *        data-clipia-snapshot="/generations/ID/snapshot">
 *     <p data-clipia-status aria-live="polite">Connecting…</p>  status line
 *     <progress data-clipia-progress max="100"></progress>      indeterminate while unknown
 *     <p data-clipia-eta></p>                                    "about 12 s left"
 *     <div data-clipia-output></div>                             the media, or .clipia-error
 *   </div>
 *
 * Updates are Server-Sent Events (a JSON snapshot of the request record per message;
 * "event: end" ends the stream). Without EventSource, when the stream cannot (re)connect,
 * or when the server ends it early, it polls the snapshot URL about once a second (404:
 * not known yet). data-clipia-state on the container says streaming | polling | done |
 * error (gave up); it dispatches "clipia:update" and "clipia:done" (detail: the snapshot).
 * Server data goes into textContent and setAttribute only; media URLs only if http(s).
 */
(function () {
  "use strict";

  if (window.ClipiaProgress) return; // included twice

  const POLL_INTERVAL_MS = 1000;
  const POLL_MAX_INTERVAL_MS = 5000; // backoff after failed polls (a 404 is no failure)
  const POLL_FAILURES_BEFORE_GIVING_UP = 20;
  const STREAM_ERRORS_BEFORE_POLLING = 3; // in a row, without a message in between
  const LABELS = {
    SUBMITTED: "Submitted", IN_QUEUE: "In queue", IN_PROGRESS: "Generating",
    COMPLETED: "Completed", FAILED: "Failed", CANCELED: "Canceled", TIMED_OUT: "Timed out",
  };
  const MEDIA = [["img", "images", "image"], ["video", "videos", "video"],
                 ["audio", "audios", "audio"]];
  const handles = new WeakMap();

  function part(root, name) {
    return root.querySelector("[data-clipia-" + name + "]");
  }

  function setText(element, text) {
    // The same text is not written again: a live region would announce it again.
    if (element && element.textContent !== text) element.textContent = text;
  }

  function safeUrl(value) {
    try {
      const url = new URL(value, document.baseURI);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function parseJson(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return null; // not a snapshot: skipped
    }
  }

  function errorMessage(snap) {
    const error = snap.result && snap.result.error;
    if (error && typeof error.message === "string" && error.message) return error.message;
    const args = snap.error && snap.error.args;
    return Array.isArray(args) && args[0] != null && args[0] !== "" ? String(args[0]) : null;
  }

  function statusText(snap) {
    const status = snap.outcome || snap.status;
    const label = LABELS[status] || (status ? String(status) : "Waiting for the first update…");
    if (snap.outcome) {
      const message = snap.outcome === "COMPLETED" ? null : errorMessage(snap);
      return message ? label + ": " + message : label;
    }
    if (status === "IN_QUEUE" && Number.isInteger(snap.queue_position)) {
      return label + (snap.queue_position > 0 ? " — position " + snap.queue_position : " — next");
    }
    if (status === "IN_PROGRESS") {
      return typeof snap.progress === "number" ? label + " — " + snap.progress + " %" : label + "…";
    }
    return label;
  }

  function showProgress(bar, snap) {
    if (!bar) return;
    if (snap.outcome === "COMPLETED") {
      bar.value = 100;
    } else if (snap.outcome) {
      if (!bar.hasAttribute("value")) bar.value = 0; // ended: stop the indeterminate animation
    } else if (typeof snap.progress === "number" && isFinite(snap.progress)) {
      bar.value = Math.min(100, Math.max(0, snap.progress));
    } else {
      bar.removeAttribute("value"); // unknown: indeterminate
    }
  }

  function etaText(etaAt) {
    if (typeof etaAt !== "number") return "";
    const left_s = Math.max(0, Math.round(etaAt - Date.now() / 1000));
    if (left_s === 0) return "almost done";
    if (left_s < 90) return "about " + left_s + " s left";
    return "about " + Math.round(left_s / 60) + " min left";
  }

  /** The media of a Clipia output as [{tag, url}]: images, then videos, then audio. */
  function mediaOf(output) {
    const media = [];
    if (!output || typeof output !== "object") return media;
    MEDIA.forEach(([tag, plural, singular]) => {
      const many = output[plural];
      (Array.isArray(many) && many.length ? many : [output[singular]]).forEach((entry) => {
        const url = entry && typeof entry.url === "string" ? safeUrl(entry.url) : null;
        if (url) media.push({ tag, url });
      });
    });
    return media;
  }

  function paragraph(className, text) {
    const p = document.createElement("p");
    p.className = className;
    p.textContent = text;
    return p;
  }

  function showOutcome(target, snap) {
    if (!target) return;
    while (target.firstChild) target.removeChild(target.firstChild);
    if (snap.outcome !== "COMPLETED") {
      const text = errorMessage(snap) || LABELS[snap.outcome] || String(snap.outcome);
      target.appendChild(paragraph("clipia-error", text));
      return;
    }
    const media = mediaOf(snap.result && snap.result.output);
    media.forEach((item, index) => {
      const element = document.createElement(item.tag);
      if (item.tag === "img") {
        element.alt = "Generated image" + (media.length > 1 ? " " + (index + 1) : "");
      } else {
        element.controls = true;
        element.preload = "metadata";
      }
      element.setAttribute("src", item.url);
      target.appendChild(element);
    });
    if (!media.length) target.appendChild(paragraph("clipia-empty", "No media to show."));
  }

  class Follower {
    constructor(root) {
      this.root = root;
      this.eventsUrl = root.getAttribute("data-clipia-events");
      this.snapshotUrl = root.getAttribute("data-clipia-snapshot");
      this.source = this.pollTimer = this.etaTimer = this.etaAt = null;
      this.streamErrors = this.pollFailures = 0;
      this.stopped = false;
      const status = part(root, "status");
      if (status && !status.hasAttribute("aria-live")) status.setAttribute("aria-live", "polite");
      if (status && !status.textContent.trim()) status.textContent = "Connecting…";
    }

    start() {
      if (this.eventsUrl && typeof window.EventSource === "function") this.stream();
      else this.poll();
    }

    stream() {
      this.root.setAttribute("data-clipia-state", "streaming");
      const source = this.source = new EventSource(this.eventsUrl);
      source.onmessage = (event) => {
        this.streamErrors = 0;
        this.show(parseJson(event.data));
      };
      // The server's last word, after the final snapshot ("finished") or when it gives up
      // ("timeout", "unavailable"): either way the snapshot URL still has the answer.
      source.addEventListener("end", () => this.poll());
      source.onerror = () => {
        if (this.source !== source) return;
        this.streamErrors += 1;
        // Otherwise (CONNECTING) the browser reconnects by itself.
        if (source.readyState === EventSource.CLOSED
            || this.streamErrors >= STREAM_ERRORS_BEFORE_POLLING) this.poll();
      };
    }

    closeStream() {
      if (this.source) this.source.close();
      this.source = null;
    }

    poll() {
      this.closeStream();
      if (this.stopped) return;
      if (!this.snapshotUrl) return this.giveUp();
      this.root.setAttribute("data-clipia-state", "polling");
      this.pollOnce();
    }

    pollOnce() {
      const init = { headers: { Accept: "application/json" }, cache: "no-store" };
      fetch(this.snapshotUrl, init)
        .then((response) => {
          if (response.status === 404) return null; // not known yet
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.json();
        })
        .then((snap) => {
          this.pollFailures = 0;
          if (snap) this.show(snap);
        }, () => { this.pollFailures += 1; })
        .then(() => {
          if (this.stopped) return;
          if (this.pollFailures >= POLL_FAILURES_BEFORE_GIVING_UP) return this.giveUp();
          const backoff_ms = POLL_INTERVAL_MS * 2 ** this.pollFailures;
          const delay_ms = Math.min(POLL_MAX_INTERVAL_MS, backoff_ms);
          this.pollTimer = setTimeout(() => this.pollOnce(), delay_ms);
        });
    }

    show(snap) {
      if (this.stopped || !snap || typeof snap !== "object") return;
      setText(part(this.root, "status"), statusText(snap));
      showProgress(part(this.root, "progress"), snap);
      this.etaAt = !snap.outcome && typeof snap.eta_at === "number" ? snap.eta_at : null;
      this.showEta();
      this.root.dispatchEvent(new CustomEvent("clipia:update", { detail: snap }));
      if (snap.outcome) {
        this.stop();
        showOutcome(part(this.root, "output"), snap);
        this.root.setAttribute("data-clipia-state", "done");
        this.root.dispatchEvent(new CustomEvent("clipia:done", { detail: snap }));
      }
    }

    showEta() {
      setText(part(this.root, "eta"), etaText(this.etaAt));
      // Count down between updates, which may come seconds apart.
      if (this.etaAt !== null && this.etaTimer === null) {
        this.etaTimer = setInterval(() => this.showEta(), 1000);
      } else if (this.etaAt === null) {
        clearInterval(this.etaTimer);
        this.etaTimer = null;
      }
    }

    giveUp() {
      this.stop();
      setText(part(this.root, "status"), "Lost the connection to the server.");
      this.root.setAttribute("data-clipia-state", "error");
    }

    /** Follow no more: no requests, timers or updates from now on. */
    stop() {
      this.stopped = true;
      this.closeStream();
      clearTimeout(this.pollTimer);
      clearInterval(this.etaTimer);
      this.pollTimer = this.etaTimer = this.etaAt = null;
    }
  }

  function follow(element) {
    if (!element || element.nodeType !== 1) throw new TypeError("follow() needs an element");
    let handle = handles.get(element);
    if (!handle) {
      const follower = new Follower(element);
      handle = { close: () => follower.stop() };
      handles.set(element, handle);
      follower.start();
    }
    return handle;
  }

  function followAll(scope) {
    const selector = "[data-clipia-events], [data-clipia-snapshot]";
    (scope || document).querySelectorAll(selector).forEach((element) => follow(element));
  }

  window.ClipiaProgress = { follow, followAll };
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", () => followAll());
  } else {
    followAll();
  }
})();
