// Recommendation cards: title, reason, source badge, and reactions posted as feedback.
//
// A reaction names the list it came from (recommendation_id) so the service can tell what was
// shown at which rank. A disliked or not-interested item is blocked by the service: the next
// refresh no longer lists it. The card keeps showing until then, marked, so the person sees
// what they did.
import { call, idempotencyKey, userPath } from "./api.js";
import { h } from "./dom.js";

const K = 6;
const SOURCES = { llm: "llm", retriever: "retriever", fallback: "fallback", cold_start: "cold start" };
const REACTIONS = [
  ["like", "Like", "Liked"],
  ["dislike", "Dislike", "Disliked: blocked from future lists"],
  ["not_interested", "Not interested", "Not interested: blocked from future lists"],
];

export function mountRecommendations(app) {
  const form = document.getElementById("recs-form");
  const query = document.getElementById("recs-query");
  const list = document.getElementById("recs-list");
  const meta = document.getElementById("recs-meta");

  async function load() {
    const user = app.userId();
    const params = new URLSearchParams({ k: String(K) });
    if (query.value.trim()) params.set("query", query.value.trim());
    list.setAttribute("aria-busy", "true");
    try {
      const result = await call("GET", userPath(user, `/recommendations?${params}`));
      list.replaceChildren(...result.items.map((item) => card(user, result.recommendation_id, item)));
      meta.textContent = result.items.length
        ? `${result.items.length} for ${user}${result.fallback_reason ? ` · ${result.fallback_reason}` : ""}`
        : `nothing to recommend for ${user}`;
      list.dataset.loaded = result.recommendation_id;
    } finally {
      list.removeAttribute("aria-busy");
    }
  }

  function card(user, recommendationId, item) {
    const titleId = `rec-title-${item.rank}`;
    const note = h("span", { class: "reacted", role: "status" });
    const buttons = REACTIONS.map(([signal, label]) =>
      h("button", {
        type: "button",
        class: "secondary",
        dataset: { signal },
        "aria-pressed": "false",
        "aria-label": `${label}: ${item.title}`,
        on: { click: () => react(signal) },
      }, label));
    const element = h("li", { class: "card", dataset: { itemId: item.item_id }, "aria-labelledby": titleId },
      h("div", { class: "card-head" },
        h("h3", { id: titleId }, item.title),
        h("span", { class: `badge ${item.source}`, title: `source: ${item.source}` }, SOURCES[item.source] || item.source)),
      h("p", { class: "reason" }, item.reason),
      h("div", { class: "actions", role: "group", "aria-label": `React to ${item.title}` }, buttons, note));

    async function react(signal) {
      buttons.forEach((b) => { b.disabled = true; });
      try {
        const answer = await call("POST", userPath(user, "/feedback"), {
          item_id: item.item_id,
          signal,
          recommendation_id: recommendationId,
          refine: app.refineWithReactions(),
        }, { "Idempotency-Key": idempotencyKey("web-feedback") });
        element.dataset.reaction = signal;
        buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.signal === signal)));
        note.textContent = REACTIONS.find(([s]) => s === signal)[2];
        const refined = answer.refine && answer.refine.status === "refined" && answer.refine.version
          ? ` · profile refined to version ${answer.refine.version.version}` : "";
        app.notify(`${REACTIONS.find(([s]) => s === signal)[1]} recorded for “${item.title}”${refined}`);
        app.changed("feedback");
      } catch (error) {
        app.fail(error);
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    }
    return element;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load().catch(app.fail);
  });
  return { load, clear: () => { list.replaceChildren(); meta.textContent = ""; } };
}
