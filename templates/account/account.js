// Sends the account page's form to Latchkey's API as JSON and shows the answer. Served from
// Latchkey itself: the pages' Content-Security-Policy allows no other script.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("account-form");
  const status = document.getElementById("status");
  if (!form) return;

  const show = (text, kind) => {
    status.textContent = text;
    status.className = kind;
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const body = { token: data.get("token") };
    if (data.has("new_password")) {
      if (data.get("new_password") !== data.get("new_password_confirm")) {
        show("The two passwords differ.", "error");
        return;
      }
      body.new_password = data.get("new_password");
    }
    const button = form.querySelector("button");
    button.disabled = true;
    show("Sending...", "");
    try {
      const response = await fetch(form.dataset.endpoint, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: "omit",
        body: JSON.stringify(body),
      });
      if (response.ok) {
        form.remove();
        show(form.dataset.done, "done");
        return;
      }
      const answer = await response.json().catch(() => ({}));
      const error = answer.error || {};
      const details = (error.details || []).map((d) => d.issue).join("; ");
      show(details ? `${error.message}: ${details}` : error.message || "Something went wrong; try again.", "error");
    } catch (_) {
      show("Latchkey could not be reached; try again.", "error");
    }
    button.disabled = false;
  });
});
