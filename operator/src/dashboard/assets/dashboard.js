// Harmony Fleet dashboard: the little behaviour htmx does not give us.
// Served from /assets/ (CSP script-src 'self'): no inline handlers, no eval.
(function () {
  "use strict";

  // Live indicator: green while the SSE stream is open.
  document.body.addEventListener("htmx:sseOpen", function () {
    document.body.classList.add("sse-open");
  });
  document.body.addEventListener("htmx:sseError", function () {
    document.body.classList.remove("sse-open");
  });

  // Upload progress. htmx reports the progress of the request body and of
  // the response alike (same event, no way to tell them apart), so the bar
  // follows only the first total it sees per upload: the request body's.
  // Once the body is sent the operator still hashes and stores the bundle,
  // which for a large one takes a while: say so instead of a silent bar.
  // (getAttribute: the form's input named "id" shadows its `.id`.)
  var uploadTotal = null;
  function isUploadForm(elt) {
    return !!elt && elt.getAttribute && elt.getAttribute("id") === "upload-form";
  }
  document.body.addEventListener("htmx:beforeRequest", function (evt) {
    if (isUploadForm(evt.target)) {
      uploadTotal = null;
      var bar = document.getElementById("upload-progress");
      if (bar) { bar.value = 0; }
      var result = document.getElementById("upload-result");
      if (result) { result.textContent = ""; }
    }
  });
  document.body.addEventListener("htmx:xhr:progress", function (evt) {
    var bar = document.getElementById("upload-progress");
    var d = evt.detail;
    if (!bar || !isUploadForm(evt.target) || !d || !d.lengthComputable) { return; }
    if (uploadTotal === null) { uploadTotal = d.total; }
    if (d.total !== uploadTotal) { return; }
    bar.max = d.total;
    bar.value = d.loaded;
    var result = document.getElementById("upload-result");
    if (d.loaded === d.total && result && result.childElementCount === 0) {
      result.textContent = "Sent; the operator is checking and storing the bundle\u2026";
    }
  });

  // Error responses (4xx/5xx) carry an HTML fragment: show it in #flash
  // instead of dropping it, as htmx does by default.
  document.body.addEventListener("htmx:beforeSwap", function (evt) {
    var xhr = evt.detail.xhr;
    if (xhr && xhr.status >= 400 && xhr.getResponseHeader("HX-Redirect") === null) {
      var flash = document.getElementById("flash");
      if (flash) {
        evt.detail.shouldSwap = true;
        evt.detail.isError = false;
        evt.detail.target = flash;
        evt.detail.swapOverride = "innerHTML";
      }
    }
  });
})();
