// scopegate dashboard: manage an organization's keys through the gateway's keys API
// (POST /keys, GET /keys, DELETE /keys/{id}) on the same origin.
//
// Rules this file keeps:
// - The token lives in one variable of this closure. It is never written to the URL, a cookie,
//   localStorage or sessionStorage, and signing out (or a 401) forgets it.
// - A new key's secret is put in the page once and removed for good by "Done".
// - Text from the API reaches the page through textContent only, never innerHTML.
// - No inline scripts or styles: the page's CSP forbids them.
(function () {
  "use strict";

  // State Backed's scopes, grouped by the key "use" that grants them. Scopes a deployment adds
  // with `[auth] extra_scopes` are not offered here (the API has no catalogue endpoint).
  const CATALOGUE = [
    { group: "Production", scopes: ["events.write", "state.read", "instances.write", "indexes.read"] },
    { group: "CI", scopes: ["machines.read", "machines.write", "machine-versions.read", "machine-versions.write"] },
    { group: "Admin", scopes: ["org.write", "org-keys.write", "org-members.write"] },
    {
      group: "Other",
      scopes: [
        "events.read", "instances.read", "instances.admin", "machines.admin",
        "analytics.read", "org.read", "logs.read", "tokens.admin",
      ],
    },
  ];

  const USE_SCOPES = {
    production: CATALOGUE[0].scopes,
    ci: CATALOGUE[1].scopes,
    admin: CATALOGUE[2].scopes,
  };

  // A runaway cursor must not loop forever.
  const MAX_PAGES = 1000;

  let token = null; // the pasted token; null when signed out
  let tokenKeyId = null; // the `kid` of the token's header, to mark "your key" in the list
  let tokenScopes = null; // the token's own `scope` claim, when it narrows the key's scopes
  let ownScopes = null; // what the signed-in key may grant, as far as the list tells
  let pendingDelete = null; // {id, name} while the confirmation dialog is open
  let listGeneration = 0; // a newer listing makes an older one's result stale

  const $ = (id) => document.getElementById(id);

  const el = {
    error: $("error"),
    status: $("status"),
    session: $("session"),
    sessionKey: $("session-key"),
    signOut: $("sign-out"),
    signinView: $("signin-view"),
    signinForm: $("signin-form"),
    tokenInput: $("token-input"),
    signIn: $("sign-in"),
    appView: $("app-view"),
    secretPanel: $("secret-panel"),
    newKeyId: $("new-key-id"),
    newKeySecret: $("new-key-secret"),
    copySecret: $("copy-secret"),
    secretDone: $("secret-done"),
    createForm: $("create-form"),
    keyName: $("key-name"),
    scopePicker: $("scope-picker"),
    createKey: $("create-key"),
    keysTitle: $("keys-title"),
    keysCount: $("keys-count"),
    keysEmpty: $("keys-empty"),
    keysTable: $("keys-table"),
    keysBody: $("keys-body"),
    refresh: $("refresh-keys"),
    dialog: $("confirm-delete"),
    dialogName: $("confirm-delete-name"),
    dialogId: $("confirm-delete-id"),
    dialogSelf: $("confirm-delete-self"),
    dialogYes: $("confirm-delete-yes"),
    dialogCancel: $("confirm-delete-cancel"),
  };

  // ---- messages ----------------------------------------------------------------------------

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = false;
    el.status.textContent = "";
  }

  function showStatus(text) {
    el.error.hidden = true;
    el.error.textContent = "";
    el.status.textContent = text;
  }

  // ---- the API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    if (!token) throw new ApiError(401, "missing-token", "you are not signed in");
    const headers = { Authorization: "Bearer " + token, Accept: "application/json" };
    const init = {
      method,
      headers,
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, "network", "the gateway did not answer (" + (e && e.message ? e.message : "network error") + ")");
    }
    if (response.status === 204) return null;
    let data = null;
    const text = await response.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!response.ok) {
      const message = data && typeof data.error === "string" ? data.error : "the gateway answered " + response.status;
      const code = data && typeof data.code === "string" ? data.code : "";
      throw new ApiError(response.status, code, message);
    }
    return data;
  }

  const LOAD = "load the keys";

  // One place that turns a failed call into words; a 401 ends the session. `action` is what
  // was attempted, as in "Could not create the key".
  function explain(err, action) {
    const detail = err && err.message ? String(err.message) : String(err);
    if (!(err instanceof ApiError)) {
      showError("Could not " + action + ": " + detail + ".");
      return;
    }
    switch (err.status) {
      case 401:
        signOut();
        showError(
          "Your token is invalid or has expired (the gateway said: " + detail + "). " +
          "Sign in again with a fresh token."
        );
        return;
      case 403:
        if (err.code === "missing-scope" && action === LOAD) {
          showError(
            "This token cannot manage keys: its key needs the org-keys.write scope " +
            "(the gateway said: " + detail + ")."
          );
        } else {
          showError("Could not " + action + ": " + detail + ".");
        }
        return;
      case 0:
        showError("Could not " + action + ": " + detail + ". Check that the gateway is running.");
        return;
      default:
        showError("Could not " + action + ": " + detail + ".");
    }
  }

  // ---- signing in and out ------------------------------------------------------------------

  // Reads the token's header and payload for display only (key id, expiry); the gateway is
  // what verifies it.
  function peek(jwt) {
    const part = (i) => {
      const seg = jwt.split(".")[i];
      if (!seg) return null;
      try {
        const b64 = seg.replace(/-/g, "+").replace(/_/g, "/");
        const bin = atob(b64 + "===".slice((b64.length + 3) % 4));
        const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
        return JSON.parse(new TextDecoder().decode(bytes));
      } catch (_) {
        return null;
      }
    };
    return { header: part(0), payload: part(1) };
  }

  function describeSession() {
    const { header, payload } = peek(token);
    tokenKeyId = header && typeof header.kid === "string" ? header.kid : null;
    tokenScopes = null;
    if (payload && typeof payload.scope === "string") tokenScopes = payload.scope.split(/\s+/).filter(Boolean);
    if (payload && Array.isArray(payload.scope)) tokenScopes = payload.scope.map(String);
    let text = tokenKeyId ? "Signed in with key " + tokenKeyId : "Signed in";
    if (payload && typeof payload.exp === "number") {
      const exp = new Date(payload.exp * 1000);
      if (!Number.isNaN(exp.getTime())) text += " · token expires " + formatDate(exp);
    }
    el.sessionKey.textContent = text;
  }

  async function signIn(event) {
    event.preventDefault();
    let pasted = el.tokenInput.value.trim();
    // Clear the field at once: the token now lives in `token` only.
    el.tokenInput.value = "";
    pasted = pasted.replace(/^bearer\s+/i, "").trim();
    if (!pasted) {
      showError("Paste a token to sign in.");
      el.tokenInput.focus();
      return;
    }
    if (pasted.split(".").length !== 3) {
      showError("That does not look like a token: a JWT has three parts separated by dots.");
      el.tokenInput.focus();
      return;
    }
    token = pasted;
    el.signIn.disabled = true;
    showStatus("Signing in…");
    try {
      // Listing the keys checks the token and its org-keys.write scope in one call.
      const keys = await fetchAllKeys();
      describeSession();
      el.signinView.hidden = true;
      el.session.hidden = false;
      el.appView.hidden = false;
      renderKeys(keys);
      showStatus("Signed in. " + countText(keys.length) + ".");
      el.keyName.focus();
    } catch (err) {
      token = null;
      if (err instanceof ApiError && err.status === 401) {
        showError(
          "Sign-in refused: the token is invalid or has expired (the gateway said: " +
          err.message + "). Paste a fresh token."
        );
      } else {
        explain(err, LOAD);
      }
      el.tokenInput.focus();
    } finally {
      el.signIn.disabled = false;
    }
  }

  function signOut() {
    token = null;
    tokenKeyId = null;
    tokenScopes = null;
    ownScopes = null;
    listGeneration += 1;
    hideSecret();
    if (el.dialog.open) el.dialog.close();
    pendingDelete = null;
    el.keysBody.replaceChildren();
    el.keysCount.textContent = "";
    el.sessionKey.textContent = "";
    el.createForm.reset();
    syncScopePicker();
    el.appView.hidden = true;
    el.session.hidden = true;
    el.signinView.hidden = false;
    el.tokenInput.value = "";
    el.tokenInput.focus();
  }

  // ---- listing -----------------------------------------------------------------------------

  async function fetchAllKeys() {
    const keys = [];
    let cursor = null;
    const seen = new Set();
    for (let page = 0; page < MAX_PAGES; page += 1) {
      const path = cursor ? "/keys?cursor=" + encodeURIComponent(cursor) : "/keys";
      const data = await api("GET", path);
      if (!data || !Array.isArray(data.keys)) throw new Error("the gateway sent an unexpected list");
      keys.push(...data.keys);
      if (typeof data.cursor !== "string" || data.cursor === "" || seen.has(data.cursor)) return keys;
      seen.add(data.cursor);
      cursor = data.cursor;
    }
    return keys;
  }

  async function reloadKeys(quiet) {
    const generation = ++listGeneration;
    el.refresh.disabled = true;
    try {
      const keys = await fetchAllKeys();
      if (generation !== listGeneration || !token) return;
      renderKeys(keys);
      if (!quiet) showStatus("Keys refreshed. " + countText(keys.length) + ".");
    } catch (err) {
      if (generation === listGeneration) explain(err, LOAD);
    } finally {
      el.refresh.disabled = false;
    }
  }

  function countText(n) {
    return n === 1 ? "1 key" : n + " keys";
  }

  function formatDate(date) {
    try {
      return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    } catch (_) {
      return date.toISOString();
    }
  }

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function cell(label, className) {
    const td = node("td", className);
    td.dataset.label = label; // shown as a caption when the table folds into cards
    return td;
  }

  // The API's two spellings of one scope.
  const canonical = (scope) => (scope === "org.keys.write" ? "org-keys.write" : scope);

  function rememberOwnScopes(keys) {
    const mine = keys.find((k) => String(k.id) === tokenKeyId);
    if (!mine || !Array.isArray(mine.scopes)) {
      ownScopes = null;
      return;
    }
    let scopes = mine.scopes.map((s) => canonical(String(s)));
    if (tokenScopes) {
      const narrowed = new Set(tokenScopes.map(canonical));
      scopes = scopes.filter((s) => narrowed.has(s));
    }
    ownScopes = new Set(scopes);
  }

  function renderKeys(keys) {
    rememberOwnScopes(keys);
    // Newest first; ties keep the API's order.
    const sorted = keys.slice().sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    const rows = sorted.map((k) => {
      const id = String(k.id);
      const name = String(k.name);
      const tr = node("tr");
      tr.dataset.testid = "key-row";
      tr.dataset.keyId = id;

      const nameCell = cell("Name", "key-name");
      const nameBox = node("div");
      nameBox.append(node("span", "name", name));
      if (tokenKeyId && id === tokenKeyId) nameBox.append(" ", node("span", "badge", "your key"));
      nameCell.append(nameBox);

      const idCell = cell("Id");
      idCell.append(node("code", "key-id", id));

      const scopeCell = cell("Scopes");
      const list = node("ul", "scopes");
      for (const s of Array.isArray(k.scopes) ? k.scopes : []) list.append(node("li", "scope", String(s)));
      scopeCell.append(list);

      const createdCell = cell("Created");
      const raw = String(k.created_at || "");
      const when = new Date(raw);
      const time = node("time", null, Number.isNaN(when.getTime()) ? raw : formatDate(when));
      time.dateTime = raw;
      time.title = raw;
      createdCell.append(time);

      const actionCell = cell("", "row-actions");
      const del = node("button", "button button-danger-quiet", "Delete");
      del.type = "button";
      del.dataset.testid = "delete-key";
      del.setAttribute("aria-label", "Delete key " + name + " (" + id + ")");
      del.addEventListener("click", () => askDelete(id, name, del));
      actionCell.append(del);

      tr.append(nameCell, idCell, scopeCell, createdCell, actionCell);
      return tr;
    });
    el.keysBody.replaceChildren(...rows);
    showCount();
  }

  function showCount() {
    const n = el.keysBody.rows.length;
    el.keysCount.textContent = "(" + n + ")";
    el.keysEmpty.hidden = n !== 0;
    el.keysTable.hidden = n === 0;
  }

  // ---- creating ----------------------------------------------------------------------------

  function buildScopePicker() {
    for (const { group, scopes } of CATALOGUE) {
      const box = node("div", "scope-group");
      box.append(node("p", "scope-group-title", group));
      for (const scope of scopes) {
        const label = node("label", "scope-choice");
        const input = document.createElement("input");
        input.type = "checkbox";
        input.value = scope;
        input.id = "scope-" + scope;
        input.dataset.testid = "scope-" + scope;
        label.append(input, node("code", null, scope));
        box.append(label);
      }
      el.scopePicker.append(box);
    }
  }

  function selectedUse() {
    const checked = el.createForm.querySelector('input[name="key-use"]:checked');
    return checked ? checked.value : "production";
  }

  function syncScopePicker() {
    const custom = selectedUse() === "custom";
    el.scopePicker.hidden = !custom;
    el.scopePicker.disabled = !custom;
  }

  async function createKey(event) {
    event.preventDefault();
    const name = el.keyName.value.trim();
    if (!name) {
      showError("Give the key a name.");
      el.keyName.focus();
      return;
    }
    const use = selectedUse();
    const body = { name };
    if (use === "custom") {
      const scopes = Array.from(el.scopePicker.querySelectorAll("input[type=checkbox]:checked"), (i) => i.value);
      if (scopes.length === 0) {
        showError("Choose at least one scope, or pick a use.");
        el.scopePicker.querySelector("input").focus();
        return;
      }
      body.scopes = scopes;
    } else {
      body.use = use;
    }
    el.createKey.disabled = true;
    showStatus("Creating key " + name + "…");
    try {
      const created = await api("POST", "/keys", body);
      if (!created || typeof created.id !== "string" || typeof created.key !== "string") {
        throw new Error("the gateway sent an unexpected answer");
      }
      el.createForm.reset();
      syncScopePicker();
      showSecret(created.id, created.key);
      showStatus("Key " + name + " created. Copy its secret now: it will never be shown again.");
      reloadKeys(true);
    } catch (err) {
      if (err instanceof ApiError && err.status === 403 && err.code === "missing-scope" && ownScopes) {
        const wanted = body.scopes || USE_SCOPES[body.use] || [];
        const lacking = wanted.filter((s) => !ownScopes.has(canonical(s)));
        if (lacking.length > 0) err.message += "; the key you signed in with lacks " + lacking.join(", ");
      }
      explain(err, "create the key");
    } finally {
      el.createKey.disabled = false;
    }
  }

  function showSecret(id, secret) {
    el.newKeyId.textContent = id;
    el.newKeySecret.textContent = secret;
    el.copySecret.textContent = "Copy";
    el.secretPanel.hidden = false;
    el.secretPanel.focus();
  }

  // Removes the secret from the page: after this, nothing in the tab holds it.
  function hideSecret() {
    el.newKeySecret.textContent = "";
    el.newKeyId.textContent = "";
    el.secretPanel.hidden = true;
    const selection = window.getSelection();
    if (selection) selection.removeAllRanges();
  }

  function selectSecret() {
    const range = document.createRange();
    range.selectNodeContents(el.newKeySecret);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  async function copySecret() {
    const secret = el.newKeySecret.textContent;
    if (!secret) return;
    try {
      // Only in a secure context (https, or localhost).
      if (!navigator.clipboard || !navigator.clipboard.writeText) throw new Error("no clipboard");
      await navigator.clipboard.writeText(secret);
      el.copySecret.textContent = "Copied";
      showStatus("The secret is on the clipboard.");
    } catch (_) {
      selectSecret();
      let copied = false;
      try {
        copied = document.execCommand("copy");
      } catch (_) {
        copied = false;
      }
      if (copied) {
        el.copySecret.textContent = "Copied";
        showStatus("The secret is on the clipboard.");
      } else {
        showStatus("The secret is selected: press Ctrl+C (⌘C on a Mac) to copy it.");
      }
    }
  }

  function secretDone() {
    hideSecret();
    showStatus("The secret is gone from this page.");
    el.keysTitle.focus();
  }

  // ---- deleting ----------------------------------------------------------------------------

  let returnFocusTo = null;

  function askDelete(id, name, button) {
    pendingDelete = { id, name };
    returnFocusTo = button;
    el.dialogName.textContent = name;
    el.dialogId.textContent = id;
    el.dialogSelf.hidden = !(tokenKeyId && id === tokenKeyId);
    el.dialogYes.disabled = false;
    el.dialog.showModal();
    el.dialogCancel.focus();
  }

  function closeDialog() {
    if (el.dialog.open) el.dialog.close();
  }

  async function confirmDelete() {
    const target = pendingDelete;
    if (!target) return closeDialog();
    el.dialogYes.disabled = true;
    try {
      await api("DELETE", "/keys/" + encodeURIComponent(target.id));
      pendingDelete = null;
      closeDialog();
      if (tokenKeyId && target.id === tokenKeyId) {
        signOut();
        showStatus("Key " + target.name + " deleted. It was the key you signed in with, so you are signed out.");
        return;
      }
      const row = el.keysBody.querySelector('tr[data-key-id="' + CSS.escape(target.id) + '"]');
      if (row) row.remove();
      showCount();
      showStatus("Key " + target.name + " (" + target.id + ") deleted.");
      el.keysTitle.focus();
      reloadKeys(true);
    } catch (err) {
      pendingDelete = null;
      closeDialog();
      explain(err, "delete the key");
    }
  }

  // ---- wiring ------------------------------------------------------------------------------

  buildScopePicker();
  syncScopePicker();
  el.signinForm.addEventListener("submit", signIn);
  el.signOut.addEventListener("click", () => {
    signOut();
    showStatus("Signed out. The token is forgotten.");
  });
  el.createForm.addEventListener("submit", createKey);
  el.createForm.addEventListener("change", (e) => {
    if (e.target && e.target.name === "key-use") syncScopePicker();
  });
  el.refresh.addEventListener("click", () => reloadKeys(false));
  el.copySecret.addEventListener("click", copySecret);
  el.secretDone.addEventListener("click", secretDone);
  el.dialogYes.addEventListener("click", confirmDelete);
  el.dialogCancel.addEventListener("click", closeDialog);
  el.dialog.addEventListener("close", () => {
    pendingDelete = null;
    if (returnFocusTo && document.contains(returnFocusTo)) returnFocusTo.focus();
    returnFocusTo = null;
  });

  el.signinView.hidden = false;
  el.tokenInput.focus();
})();
