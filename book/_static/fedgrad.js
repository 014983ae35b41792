// Result tables print a value as "mean [lo–hi]" (or "mean ± half-width").  Browsers may break a
// line after the en dash or after "±", which splits the range: wrap each range in a
// <span class="value-range"> (white-space: nowrap in fedgrad.css), so a line breaks only between
// the mean and its range.
document.addEventListener("DOMContentLoaded", () => {
  const range = /(\[[^\[\]]*\u2013[^\[\]]*\]|\u00b1\s*[\d.]+)/g;
  for (const cell of document.querySelectorAll("article td")) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    const nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    for (const node of nodes) {
      const text = node.nodeValue;
      if (!range.test(text)) continue;
      range.lastIndex = 0;
      const parts = document.createDocumentFragment();
      let last = 0;
      for (const match of text.matchAll(range)) {
        parts.append(text.slice(last, match.index));
        const span = document.createElement("span");
        span.className = "value-range";
        span.textContent = match[0];
        parts.append(span);
        last = match.index + match[0].length;
      }
      parts.append(text.slice(last));
      node.replaceWith(parts);
    }
  }
});
