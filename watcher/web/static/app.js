// Refreshes the page's <main> in place every few seconds: fetch, parse, swap. No inline
// script (the Content-Security-Policy forbids it), no external asset, no full reload.
"use strict";
(function () {
  const main = document.getElementById("content");
  const status = document.getElementById("refresh-status");
  if (!main) return;
  const seconds = parseInt(main.dataset.refresh || "0", 10);
  if (!(seconds > 0)) return;
  let busy = false;

  async function refresh() {
    if (busy || document.hidden) return;
    // Never swap under someone choosing filters or selecting text.
    if (main.contains(document.activeElement) && document.activeElement.matches("input, select")) return;
    const selection = window.getSelection();
    if (selection && !selection.isCollapsed) return;
    busy = true;
    try {
      const response = await fetch(window.location.href, {
        headers: { "Accept": "text/html" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.getElementById("content");
      const freshStatus = doc.getElementById("refresh-status");
      if (fresh) main.replaceChildren(...fresh.childNodes);
      if (status && freshStatus) {
        status.textContent = freshStatus.textContent;
        status.classList.remove("stale");
      }
    } catch (err) {
      if (status) {
        status.textContent = "not updated: the watcher did not answer";
        status.classList.add("stale");
      }
    } finally {
      busy = false;
    }
  }

  window.setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refresh();
  });
})();
