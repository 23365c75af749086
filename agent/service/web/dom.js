// Building elements from data. Text always goes in as text (never parsed as HTML), so model
// replies, titles and reasons cannot inject markup or script into the page.

/** h("li", {class: "card", dataset: {itemId: "x"}}, "text", child) -> HTMLElement */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(element.dataset, value);
    else if (name === "on") for (const [event, handler] of Object.entries(value)) element.addEventListener(event, handler);
    else if (name === "class") element.className = value;
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

export function percent(value) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`;
}

export function integer(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
}

export function when(iso) {
  return new Date(iso).toLocaleString("en-GB", { dateStyle: "short", timeStyle: "medium" });
}
