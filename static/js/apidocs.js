// Swagger UI on /schema (app/web/apidocs.py): the app's own OpenAPI document, nothing from elsewhere (no
// validator badge from the internet). A file rather than an inline script: the Content Security Policy.
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    validatorUrl: null
  });
})();
