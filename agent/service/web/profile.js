// The profile panel: the latest stored version, what changed from the version before it, and
// every version (choose one to see its changes). "Build profile" stores a new version from the
// user's history; reactions with "refine" on store a refined version (see recommendations.js).
import { ApiError, call, userPath } from "./api.js";
import { h, when } from "./dom.js";

const KINDS = {
  interest_added: "interest added",
  interest_strengthened: "interest stronger",
  interest_weakened: "interest weaker",
  interest_decayed: "interest faded",
  interest_removed: "interest removed",
  dislike_added: "dislike added",
  dislike_removed: "dislike removed",
  item_blocked: "item blocked",
  item_unblocked: "item unblocked",
  summary_changed: "summary rewritten",
  ignored: "ignored",
};

export function mountProfile(app) {
  const current = document.getElementById("profile-current");
  const diff = document.getElementById("profile-diff");
  const history = document.getElementById("profile-history");
  const build = document.getElementById("profile-build");
  const diffTitle = document.getElementById("diff-title");
  let versions = [];

  async function load() {
    const user = app.userId();
    const answer = await call("GET", userPath(user, "/profile/history"));
    versions = answer.versions;
    history.dataset.versions = String(versions.length);
    if (!versions.length) {
      current.replaceChildren(h("p", { class: "note" },
        `No stored profile for ${user} yet. Build one from their history, or react to a recommendation with refining on.`));
      diff.replaceChildren();
      history.replaceChildren();
      diffTitle.textContent = "Changes";
      return;
    }
    const latest = versions[versions.length - 1];
    current.replaceChildren(...describe(latest));
    history.replaceChildren(...versions.slice().reverse().map((v) =>
      h("li", { dataset: { version: String(v.version) } },
        h("button", { type: "button", "aria-label": `Show the changes of version ${v.version}`, on: { click: () => showChanges(v) } },
          `v${v.version}`),
        ` ${v.producer} · ${when(v.created_at)}`)));
    await showChanges(latest);
  }

  function describe(version) {
    const profile = version.profile;
    return [
      h("p", { class: "note" }, `Version ${version.version} · ${version.producer}${version.model ? ` · ${version.model}` : ""} · ${when(version.created_at)}`),
      h("p", {}, profile.summary),
      h("ul", { class: "interests", "aria-label": "Interests" },
        profile.interests.map((i) => h("li", {},
          h("span", {}, i.name),
          h("meter", { min: "0", max: "1", value: String(i.strength), "aria-label": `${i.name} strength ${i.strength}` })))),
      profile.dislikes.length ? h("p", {}, h("strong", {}, "Dislikes: "), profile.dislikes.map((d) => d.name).join(", ")) : null,
      version.blocked_items.length ? h("p", {}, h("strong", {}, "Blocked items: "), version.blocked_items.join(", ")) : null,
    ].filter(Boolean);
  }

  async function showChanges(version) {
    for (const button of history.querySelectorAll("button")) {
      button.setAttribute("aria-current", String(button.parentElement.dataset.version === String(version.version)));
    }
    if (version.version === 1) {
      diffTitle.textContent = "Changes in v1";
      diff.replaceChildren(h("li", {}, `first version, ${version.producer === "profile" ? "built from the history" : `made by ${version.producer}`}`));
      return;
    }
    const from = version.version - 1;
    const answer = await call("GET", userPath(app.userId(), `/profile/diff?from=${from}&to=${version.version}`));
    // The diff names what changed; the version's own change records say why.
    const why = new Map(version.changes.map((c) => [`${c.kind}:${c.name}`, c.rationale]));
    diffTitle.textContent = `Changes v${from} → v${version.version}`;
    diff.dataset.to = String(version.version);
    diff.replaceChildren(...(answer.changes.length ? answer.changes : [{ kind: "ignored", name: "no visible change" }]).map((c) =>
      h("li", {},
        h("span", { class: "kind" }, KINDS[c.kind] || c.kind), " ", c.name,
        c.before !== null && c.before !== undefined && c.after !== null && c.after !== undefined ? ` (${c.before.toFixed(2)} → ${c.after.toFixed(2)})` : "",
        why.get(`${c.kind}:${c.name}`) ? h("span", { class: "note" }, ` — ${why.get(`${c.kind}:${c.name}`)}`) : null)));
  }

  build.addEventListener("click", async () => {
    build.disabled = true;
    try {
      const version = await call("POST", userPath(app.userId(), "/profile"));
      app.notify(`Profile version ${version.version} stored for ${version.user_id}`);
      app.changed("profile");
    } catch (error) {
      app.fail(error);
    } finally {
      build.disabled = false;
    }
  });

  return {
    load: () => load().catch((error) => (error instanceof ApiError && error.status === 404 ? null : Promise.reject(error))),
    clear: () => { current.replaceChildren(); diff.replaceChildren(); history.replaceChildren(); },
  };
}
