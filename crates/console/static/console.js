// Live parts of the console: a table with data-live="<url>" has its <tbody> replaced by what the
// server streams over Server-Sent Events (HTML rendered and escaped on the server).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("table[data-live]").forEach(function (table) {
    var body = table.querySelector("tbody");
    if (!body || !window.EventSource) { return; }
    var source = new EventSource(table.getAttribute("data-live"));
    source.onmessage = function (e) { body.innerHTML = e.data; };
  });
});
