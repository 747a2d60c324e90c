// MathJax 3 configuration; loaded before the vendored assets/vendor/mathjax/tex-svg-full.js.
// SVG output needs no web fonts, so math renders offline. Only pymdownx.arithmatex spans are
// processed.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  svg: { fontCache: "global" },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
