// Wheel Farm dashboard: place the step bars and follow a job's log over Server-Sent Events.
"use strict";
(function () {
  for (const bar of document.querySelectorAll(".bar[data-left]")) {
    bar.style.left = bar.dataset.left + "%";
    bar.style.width = bar.dataset.width + "%";
  }
  const log = document.getElementById("log");
  const status = document.getElementById("log-status");
  if (!log || !window.EventSource) return;
  const source = new EventSource(log.dataset.stream);
  const follow = () => log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  const append = (text) => {
    const stick = follow();
    log.appendChild(document.createTextNode(text + "\n"));
    if (stick) log.scrollTop = log.scrollHeight;
  };
  source.onmessage = (e) => append(e.data);
  source.addEventListener("note", (e) => append("[" + e.data + "]"));
  source.addEventListener("attempt", (e) => append("===== " + e.data + " ====="));
  source.addEventListener("reset", () => { log.textContent = ""; });
  source.addEventListener("end", (e) => {
    source.close();
    status.textContent = "The job has ended: " + e.data + ".";
    log.dataset.ended = e.data;
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) status.textContent = "The log stream closed.";
  };
})();
