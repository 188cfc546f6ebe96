// Settings: this install's access key, the "Install app" button, and the question a key link asks before it
// replaces the stored key.

import * as api from "./api.js";

const $ = (id) => document.getElementById(id);

let installPrompt = null; // the browser's deferred install offer (beforeinstallprompt), when it made one

export function renderSettings() {
  const source = api.keySource();
  $("api-key").value = source === "install" ? api.apiKey() : "";
  $("key-status").textContent = {
    install: "This install uses its own key.",
    dev: "Using the development key from this server (make run). No key needed.",
    none: "No key yet: paste the key you were given, or open your install link.",
  }[source];
  $("install").hidden = !installPrompt;
  $("server-info").textContent = `Server: ${new URL(location.href).origin}`;
}

export function initSettings() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    api.setApiKey($("api-key").value.trim());
    renderSettings();
    $("key-status").textContent = `Saved. ${$("key-status").textContent}`;
  });
  window.addEventListener("beforeinstallprompt", (event) => {
    event.preventDefault(); // show our own button instead of the browser's mini-infobar
    installPrompt = event;
    $("install").hidden = false;
  });
  $("install").addEventListener("click", async () => {
    if (!installPrompt) return;
    installPrompt.prompt();
    await installPrompt.userChoice;
    installPrompt = null;
    $("install").hidden = true;
  });
}

/** A link's key replaces the stored one only after the person says so (api.linkKey). */
export function askAboutLinkKey() {
  const key = api.linkKey();
  const dialog = $("confirm-key");
  if (!key || dialog.open) return;
  $("confirm-key-prefix").textContent = key.length > 10 ? `${key.slice(0, 10)}…` : key;
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    () => {
      api.settleLinkKey(dialog.returnValue === "replace");
      renderSettings();
    },
    { once: true },
  );
  dialog.showModal();
}
