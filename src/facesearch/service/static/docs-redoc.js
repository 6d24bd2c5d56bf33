// Starts ReDoc on /redoc. ReDoc writes its styles into <style> elements: it gives them this
// response's nonce (on the container element), which the page's CSP allows.
"use strict";
(() => {
  const root = document.getElementById("redoc");
  // Search runs in a blob: Web Worker, which the CSP (worker-src 'self') does not allow.
  Redoc.init(root.dataset.openapi, { nonce: root.dataset.nonce, disableSearch: true }, root);
})();
