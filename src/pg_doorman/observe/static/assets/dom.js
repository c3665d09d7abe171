// Building DOM nodes from data without ever parsing it as HTML: text goes in as text nodes, attributes through
// setAttribute (never "on*" handlers from data). Application names and queries come from clients: hostile.

const SVG_NS = "http://www.w3.org/2000/svg";

/**
 * h("td", {class: "num", title: x}, "text", otherNode, [more, children]) -> element.
 * Strings and numbers become text nodes; null/undefined/false are skipped; functions in props under "on" keys
 * are event listeners (code of ours, never data).
 */
export function h(tag, props, ...children) {
  return build(document.createElement(tag), props, children);
}

/** Like h, in the SVG namespace. */
export function s(tag, props, ...children) {
  return build(document.createElementNS(SVG_NS, tag), props, children);
}

function build(element, props, children) {
  if (props) {
    for (const [name, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on") && typeof value === "function") {
        element.addEventListener(name.slice(2).toLowerCase(), value);
      } else if (name.startsWith("on")) {
        throw new Error(`refusing a non-function event handler attribute: ${name}`);
      } else if (name === "dataset") {
        for (const [key, v] of Object.entries(value)) element.dataset[key] = String(v);
      } else {
        element.setAttribute(name, value === true ? "" : String(value));
      }
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else if (child instanceof Node) element.appendChild(child);
    else element.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace all children of `element` with `children` (same rules as h). */
export function replaceChildren(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** Set an element's text (by id or node) only when it changed: no layout churn on every poll. */
export function setText(target, text) {
  const element = typeof target === "string" ? document.getElementById(target) : target;
  if (element && element.textContent !== text) element.textContent = text;
  return element;
}
