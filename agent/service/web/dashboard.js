// The dashboard tiles, from GET /v1/dashboard: the tenant's counts and this server process's
// request rate, model use and rates. Refreshed after each action on the page and, while
// "auto-refresh" is on and the tab is visible, every 10 seconds.
import { call } from "./api.js";
import { integer, percent } from "./dom.js";

const EVERY_MS = 10_000;

export function mountDashboard(app) {
  const auto = document.getElementById("dash-auto");
  const updated = document.getElementById("dash-updated");
  const panel = document.getElementById("dashboard");
  const set = (id, text) => { document.getElementById(id).textContent = text; };

  async function load() {
    const { tenant, counts, process } = await call("GET", "/v1/dashboard");
    set("dash-users", integer(counts.users));
    set("dash-items", integer(counts.items));
    set("dash-events", integer(counts.events));
    set("dash-feedback", integer(counts.feedback));
    set("dash-rate", integer(process.requests_last_minute));
    set("dash-model-calls", integer(process.model_calls));
    set("dash-tokens", integer(process.prompt_tokens + process.completion_tokens));
    set("dash-cost", `$${process.cost_usd.toFixed(4)}`);
    set("dash-fallback", percent(process.fallback_rate));
    const invented = process.grounding.invented;
    set("dash-grounded", invented === null ? "–" : percent(1 - invented));
    updated.textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
    // how many answers the tiles show: lets a test (or a person) see that a refresh landed
    panel.dataset.loads = String(Number(panel.dataset.loads || 0) + 1);
    return tenant;
  }

  setInterval(() => {
    if (auto.checked && app.signedIn() && document.visibilityState === "visible") load().catch(app.fail);
  }, EVERY_MS);
  document.getElementById("dash-refresh").addEventListener("click", () => load().catch(app.fail));
  return { load };
}
