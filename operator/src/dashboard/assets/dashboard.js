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

  // Upload progress: htmx reports XHR upload progress on the form.
  document.body.addEventListener("htmx:xhr:progress", function (evt) {
    var bar = document.getElementById("upload-progress");
    if (bar && evt.detail && evt.detail.lengthComputable) {
      bar.max = evt.detail.total;
      bar.value = evt.detail.loaded;
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
