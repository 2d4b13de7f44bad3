// Renders /openapi.json with the Swagger UI served by this node. A file, not an inline script,
// so the page's Content-Security-Policy allows only scripts from the node itself.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null, // the default sends the document to an external validator
});
