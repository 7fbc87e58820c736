// htmx comes from its CDN, pinned and checked (SRI) in templates/base.html. When that did not load (offline,
// a firewall, the CDN down), this loads the copy the app serves, vendored in static/vendor/. Deferred, right
// after the CDN's script: by the time this runs, that one has run or failed.
(function () {
  "use strict";
  if (window.htmx) return;
  function load() {
    var local = document.createElement("script");
    local.src = "/static/vendor/htmx.min.js";
    document.head.appendChild(local);
  }
  // Not before the page has loaded: htmx 2.0.4 starts on DOMContentLoaded, or at once if the document is
  // complete; a copy arriving in between would never start.
  if (document.readyState === "complete") load();
  else window.addEventListener("load", load);
})();
