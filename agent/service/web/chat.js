// Chat: each turn is POST /v1/chat, read as Server-Sent Events while it arrives.
//
// Events: session (the id to send back to continue), text (a delta appended as it comes),
// recommendations (the items the reply is about), done, error. A conversation belongs to one
// user: choosing another user starts a new one.
import { stream } from "./api.js";
import { h } from "./dom.js";

export function mountChat(app) {
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-message");
  const sendButton = document.getElementById("chat-send");
  const log = document.getElementById("chat-log");
  let sessionId = null;

  function reset() {
    sessionId = null;
    log.replaceChildren();
  }

  async function send(message) {
    const user = app.userId();
    log.append(h("li", { class: "msg user" }, h("span", { class: "who" }, user), message));
    const text = h("span", { class: "text" });
    const reply = h("li", { class: "msg assistant", dataset: { state: "streaming" } },
      h("span", { class: "who" }, "recagent"), text);
    log.append(reply);
    log.setAttribute("aria-busy", "true");
    sendButton.disabled = true;
    try {
      const body = { user_id: user, message, k: 5 };
      if (sessionId) body.session_id = sessionId;
      for await (const { event, data } of stream("/v1/chat", body)) {
        if (event === "session") sessionId = data.session_id;
        else if (event === "text") text.append(data.delta);
        else if (event === "recommendations") reply.append(picks(data.items));
        else if (event === "error") throw Object.assign(new Error(data.error.message), { type: data.error.type });
        else if (event === "done") reply.dataset.state = "done";
        log.scrollTop = log.scrollHeight;
      }
      if (reply.dataset.state !== "done") throw new Error("the reply stopped before it was complete");
      app.changed("chat");
    } catch (error) {
      reply.classList.add("error");
      reply.dataset.state = "error";
      text.append(text.textContent ? " " : "", `(${error.message})`);
      app.fail(error);
    } finally {
      log.removeAttribute("aria-busy");
      sendButton.disabled = false;
    }
  }

  function picks(items) {
    if (!items.length) return null;
    return h("ol", { class: "picks", "aria-label": "Items in this reply" },
      items.map((item) => h("li", { dataset: { itemId: item.item_id } }, item.title)));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const message = input.value.trim();
    if (!message || sendButton.disabled) return;
    input.value = "";
    send(message);
  });
  // Enter sends, Shift+Enter is a new line: the usual chat keys.
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  document.getElementById("chat-new").addEventListener("click", () => {
    reset();
    input.focus();
  });
  return { reset };
}
