// The console's wiring: sign-in, the chosen user, the status line, and which panels reload
// after what. Each panel lives in its own module; they talk to each other only through `app`.
import { ApiError, session } from "./api.js";
import { mountChat } from "./chat.js";
import { mountDashboard } from "./dashboard.js";
import { mountProfile } from "./profile.js";
import { mountRecommendations } from "./recommendations.js";

const USER_SLOT = "recagent.userId";

const signinForm = document.getElementById("signin-form");
const keyInput = document.getElementById("api-key");
const signedIn = document.getElementById("signed-in");
const tenantName = document.getElementById("tenant-name");
const userForm = document.getElementById("user-form");
const userInput = document.getElementById("user-id");
const status = document.getElementById("status");
const main = document.getElementById("main");
const refineToggle = document.getElementById("refine-toggle");

const app = {
  userId: () => userInput.value.trim(),
  signedIn: () => Boolean(session.key()),
  refineWithReactions: () => refineToggle.checked,
  notify(message) {
    status.classList.remove("error");
    status.textContent = message;
  },
  fail(error) {
    status.classList.add("error");
    const id = error instanceof ApiError && error.requestId ? ` (request ${error.requestId})` : "";
    status.textContent = `${error.message}${id}`;
    if (error instanceof ApiError && error.status === 401) signOut(false);
  },
  /** What to reload after something changed on the service. */
  changed(what) {
    const reloads = [dashboard.load()];
    if (what === "feedback" || what === "profile") reloads.push(profile.load());
    Promise.all(reloads).catch(app.fail);
  },
};

const dashboard = mountDashboard(app);
const recommendations = mountRecommendations(app);
const profile = mountProfile(app);
const chat = mountChat(app);

function showSignedIn(tenant) {
  signinForm.hidden = true;
  signedIn.hidden = false;
  tenantName.textContent = tenant;
  main.setAttribute("aria-disabled", "false");
}

function signOut(announce = true) {
  session.signOut();
  signinForm.hidden = false;
  signedIn.hidden = true;
  tenantName.textContent = "";
  main.setAttribute("aria-disabled", "true");
  recommendations.clear();
  profile.clear();
  chat.reset();
  if (announce) app.notify("Signed out: the key is gone from this tab.");
  keyInput.focus();
}

async function loadUser() {
  const user = app.userId();
  if (!user) return;
  sessionStorage.setItem(USER_SLOT, user);
  await Promise.all([recommendations.load(), profile.load()]);
  app.notify(`Showing ${user}`);
}

async function start() {
  try {
    const tenant = await dashboard.load(); // also proves the key works
    showSignedIn(tenant);
    await loadUser();
  } catch (error) {
    app.fail(error);
  }
}

signinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  keyInput.value = ""; // the key stays in sessionStorage only, not in the page
  if (!key) return;
  session.signIn(key);
  start();
});
document.getElementById("signout").addEventListener("click", () => signOut());
userForm.addEventListener("submit", (event) => {
  event.preventDefault();
  chat.reset(); // a conversation belongs to one user
  if (app.signedIn()) loadUser().catch(app.fail);
});

userInput.value = sessionStorage.getItem(USER_SLOT) || userInput.value;
if (app.signedIn()) start();
else app.notify("Sign in with an API key (recagent serve --demo prints one).");
