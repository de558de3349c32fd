/* Bee Flow setup page: the service picker and the tenant actions (e-mail verification, pairing
 * code, key rotation). Every request is relative to the page's own URL: under Nextcloud the
 * page lives at .../proxy/bee_flow/setup, so an absolute /setup/test URL would hit Nextcloud itself
 * (the reference connector's 0.1.10 bug). Text only ever goes in via textContent. */
(function () {
  "use strict";

  var BASE = window.location.pathname.replace(/\/setup\/?$/, "/");
  if (BASE.charAt(BASE.length - 1) !== "/") {
    BASE += "/";
  }

  function url(relative) {
    return new URL(BASE + relative, window.location.origin).toString();
  }

  function $(id) {
    return document.getElementById(id);
  }

  var state = {
    cloudUrl: "",
    locked: false,
    loaded: false,
    tenant: {},
    acting: false,
    timer: 0,
    autoSent: false,
  };

  function show(text, kind, id) {
    var el = $(id || "result");
    el.textContent = text;
    el.dataset.kind = kind || "info";
    el.hidden = false;
  }

  async function call(method, path, body) {
    var init = { method: method, cache: "no-store", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    var response = await fetch(url(path), init);
    var data = null;
    if ((response.headers.get("Content-Type") || "").indexOf("application/json") === 0) {
      try {
        data = await response.json();
      } catch (err) {
        data = null;
      }
    }
    return { status: response.status, ok: response.ok, data: data };
  }

  function failure(res) {
    var d = res.data || {};
    var text = d.error || "HTTP " + res.status;
    if (d.code) {
      text += " [" + d.code + "]";
    }
    return text;
  }

  function mode() {
    return $("mode-cloud").checked ? "cloud" : "self-hosted";
  }

  function syncInputs() {
    var cloud = mode() === "cloud";
    $("url").disabled = cloud;
    if (cloud) {
      $("url").value = state.cloudUrl;
    } else if ($("url").value === state.cloudUrl) {
      $("url").value = "";
    }
  }

  function tenantText(tenant) {
    if (tenant.previousKeyInUse) {
      // A rotation (or pairing) waits for the service; the key in use keeps working.
      return "Connected (the new key waits for e-mail verification)";
    }
    var labels = {
      ok: "Connected",
      initialising: "Connecting\u2026",
      provisioning: "Connecting\u2026",
      awaiting_email_verification: "Waiting for e-mail verification",
      failed: "Failed",
    };
    return labels[tenant.status] || tenant.status || "unknown";
  }

  // What the page says for each error code of the tenant actions (the code is appended too).
  var MESSAGES = {
    invalid_code_format: "Enter the 6 digits from the e-mail.",
    verification_expired:
      "The code has expired or the Bee Flow service ended the verification. The connector starts " +
      "over and the service e-mails a new code; this page shows it when it is pending.",
    no_email_address:
      "Your Nextcloud account has no e-mail address. Set one under Personal settings and try again.",
    email_not_in_org:
      "The Bee Flow service does not send the code to your address: it does not belong to the organisation.",
    retarget_refused: "The Bee Flow service refused to send the code to your address.",
    too_many_attempts: "Too many wrong codes: send a new code, then enter the new one.",
    admin_email_conflict:
      "The code is right, but the administrator's address belongs to another Bee Flow organisation.",
    user_lookup_failed: "Your Nextcloud account could not be read; try again in a moment.",
    no_pending_verification: "No e-mail verification is pending any more.",
    bootstrap_running: "The connector is provisioning right now; try again in a moment.",
    saas_unreachable: "The Bee Flow service could not be reached; check the service above and try again.",
    service_rate_limited:
      "The Bee Flow service sends at most 5 codes in 15 minutes: wait a few minutes and try again.",
    service_error: "The Bee Flow service had a problem; try again later.",
    rate_limited: "Too many attempts from this account; wait a few minutes and try again.",
    invalid_pairing_code: "A pairing code looks like ABCD-EFGH: 4 letters or digits, a dash, 4 more.",
    pairing_code_rejected:
      "The Bee Flow service did not accept this pairing code. Check it, or create a new one (codes work once).",
    bootstrap_refused: "The Bee Flow service refused to provision a key; nothing was changed.",
    bootstrap_failed: "Provisioning a new key failed; the previous state is kept.",
    tenant_store_failed:
      "The new key could not be saved to the app's storage; the previous key stays in use.",
    tenant_key_env_locked:
      "The tenant key is set by BEEFLOW_TENANT_KEY in this app's environment and cannot be changed here.",
    tenant_unavailable: "Tenant provisioning is not available in this connector.",
    admin_required: "Only Nextcloud administrators can do this.",
    json_required: "The request was refused by the connector.",
    invalid_json: "The request was refused by the connector.",
    payload_too_large: "The request was too large.",
    cross_site_request_blocked: "The request was blocked: open this page from Nextcloud itself.",
  };

  // Each bootstrap refusal that a pairing code fixes; the remediation from the connector follows.
  var PAIRING_WHY = {
    pairing_required: "This Bee Flow server asks for a pairing code before it connects a new Nextcloud.",
    pairing_code_invalid: "The Bee Flow service did not accept the pairing code.",
    pairing_code_org_gone: "The organisation of the pairing code no longer exists.",
    pairing_code_org_already_bound: "The organisation of the pairing code is connected to another Nextcloud.",
    pairing_code_race: "The pairing code was used by another request at the same moment.",
    admin_email_conflict:
      "The administrator's e-mail address already belongs to another Bee Flow organisation. A " +
      "pairing code from that organisation binds this Nextcloud to it (or give the admin another address).",
    tenant_already_provisioned:
      "The Bee Flow service already has an organisation for this Nextcloud. A pairing code from " +
      "it binds this connector to it again (or restore tenant-key.json).",
  };

  function actionFailure(res) {
    var d = res.data || {};
    var text;
    if (d.code === "wrong_code" || (d.code === "verification_expired" && d.keyKept)) {
      text = d.error || "That code is not right.";
    } else {
      text = MESSAGES[d.code] || d.error || "HTTP " + res.status;
    }
    if (d.remediation && d.code !== "tenant_key_env_locked") {
      text += " " + d.remediation;
    }
    if (d.code) {
      text += " [" + d.code + "]";
    }
    return text;
  }

  function when(iso) {
    var date = new Date(iso);
    return isNaN(date.getTime()) ? iso : date.toLocaleString();
  }

  function renderTenant(tenant) {
    state.tenant = tenant;
    var locked = !!tenant.keyLocked;
    var busy = !!tenant.busy || tenant.status === "provisioning";
    var problem = $("tenant-problem");
    var err = tenant.lastError || {};
    if (tenant.status === "ok" && err.category === "rotation_not_completed") {
      problem.textContent = err.remediation + " [" + err.category + "]";
      problem.hidden = false;
    } else if (tenant.status === "failed" && (err.remediation || err.error)) {
      // With the pairing card on screen its own text explains the fix; elsewhere the remediation.
      var fix = tenant.pairingSuggested ? "Enter a pairing code below." : err.remediation || "";
      var said = err.error ? err.error + (/[.!?]$/.test(err.error) ? " " : ". ") : "";
      problem.textContent = said + fix + (err.category ? " [" + err.category + "]" : "");
      problem.hidden = false;
    } else {
      problem.hidden = true;
    }

    var pending = tenant.pending || {};
    var verifying = tenant.status === "awaiting_email_verification" && pending.kind === "verification";
    $("verify-card").hidden = !verifying;
    if (verifying) {
      $("verify-org").textContent = pending.organizationName || tenant.organizationName || "\u2013";
      $("verify-where").textContent = pending.codeSent
        ? "A code was sent to " +
          (pending.maskedEmail || "the administrator") +
          (pending.sentVia === "retarget" ? " (an administrator's own address)." : " (the address the service holds).")
        : "No code has been sent yet.";
      var expiry = "";
      if (pending.expired) {
        expiry = "The code has expired: send a new one.";
      } else if (pending.expiresAt) {
        expiry = "It is valid until " + when(pending.expiresAt) + ".";
      }
      if (typeof pending.attemptsLeft === "number") {
        expiry += " " + pending.attemptsLeft + " attempt" + (pending.attemptsLeft === 1 ? "" : "s") + " left.";
      }
      $("verify-expiry").textContent = expiry;
    }
    $("verify-keep").hidden = !(verifying && tenant.previousKeyInUse);
    $("verify-keep-fp").textContent = tenant.fingerprint || "";
    $("verify-form").disabled = locked || busy || state.acting;

    $("pair-card").hidden = !tenant.pairingSuggested;
    var why = PAIRING_WHY[err.category] || "";
    $("pair-why").textContent = why && err.remediation ? why + " " + err.remediation : why || err.remediation || "";
    $("pair-form").disabled = locked || busy || state.acting;

    $("key-lock").hidden = !locked;
    $("rotate").disabled = locked || busy || state.acting;

    // The service e-mails no code by itself: the first administrator to open this page while
    // a verification waits gets one (once per page load; the buttons send more).
    if (verifying && !pending.codeSent && !pending.expired && !locked && !busy && !state.acting && !state.autoSent) {
      state.autoSent = true;
      window.setTimeout(requestCode, 0);
    }

    // Follow a running provisioning until it settles.
    window.clearTimeout(state.timer);
    if (busy || tenant.status === "initialising") {
      state.timer = window.setTimeout(refresh, 1500);
    }
  }

  function render(s) {
    state.cloudUrl = s.cloudUrl;
    state.locked = !!s.envOverridden;
    $("cloud-url").textContent = s.cloudUrl.replace(/^https?:\/\//, "");
    $("active").textContent = s.active;
    $("active-source").textContent =
      { env: "from environment", setup: "chosen here", bound: "bound to organisation", default: "default" }[
        s.activeSource
      ] || s.activeSource;
    var tenant = s.tenant || {};
    var ts = $("tenant-status");
    // The server's verdict from the tenant AND the saved service's health check: "Connected"
    // only when both are well.
    var conn = s.connection || { state: "unknown", label: tenantText(tenant), detail: "" };
    ts.textContent = conn.label;
    ts.className =
      conn.state === "connected" ? "state-ok" : conn.state === "unreachable" || conn.state === "failed" ? "state-bad" : "state-wait";
    ts.dataset.state = conn.state;
    ts.title = conn.detail || (tenant.lastError && tenant.lastError.error) || "";
    $("fingerprint").textContent = tenant.fingerprint || "";
    renderTenant(tenant);
    if (conn.state === "unreachable") {
      // Look again (the server checks the service at most every 15 s) until it answers.
      window.clearTimeout(state.timer);
      state.timer = window.setTimeout(refresh, 15000);
    }
    var transport = s.transport || {};
    $("transport").textContent = transport.demo
      ? "Demo stand-in proxy (streaming)"
      : transport.mode === "harp"
        ? "HaRP (streaming)"
        : "Legacy proxy (replies arrive whole)";
    var note = $("transport-note");
    note.textContent = transport.note || "";
    note.hidden = !transport.note;

    renderSignatures(((s.health || {}).ncCallbacks || {}).signatures || {});
    $("env-lock").hidden = !state.locked;
    $("env-url").textContent = s.envApiBaseUrl || "";
    if (!state.loaded) {
      var chosen = s.chosen;
      var current = chosen ? chosen.apiBaseUrl : s.active;
      var isCloud = chosen ? chosen.mode === "cloud" : current === s.cloudUrl;
      $(isCloud ? "mode-cloud" : "mode-self").checked = true;
      $("url").value = current;
      state.loaded = true;
    }
    $("form").disabled = false;
    $("save").disabled = state.locked;
    if (state.locked) {
      $("mode-cloud").disabled = true;
      $("mode-self").disabled = true;
      $("url").disabled = true;
      $("url").value = s.envApiBaseUrl || s.active;
    } else {
      syncInputs();
    }
    document.body.dataset.ready = "1";
  }

  async function refresh() {
    try {
      var res = await call("GET", "setup/status");
      if (!res.ok || !res.data) {
        show("Could not load the setup status: " + failure(res), "error");
        return;
      }
      render(res.data);
    } catch (err) {
      show("Could not load the setup status: " + err.message, "error");
    }
  }

  function describeProbe(p) {
    if (p.ok) {
      return "Connection OK (HTTP " + p.status + (p.appVersion ? ", build " + p.appVersion : "") + ")";
    }
    return "Connection failed: " + (p.error || "no answer") + (p.code ? " [" + p.code + "]" : "");
  }

  async function busy(button, work) {
    var buttons = [$("test"), $("save")];
    buttons.forEach(function (b) {
      b.disabled = true;
    });
    try {
      await work();
    } catch (err) {
      show("Request failed: " + err.message, "error");
    } finally {
      $("test").disabled = false;
      $("save").disabled = state.locked;
    }
  }

  function testConnection() {
    return busy($("test"), async function () {
      show("Testing\u2026", "info");
      var body = mode() === "cloud" ? { mode: "cloud" } : { apiBaseUrl: $("url").value };
      var res = await call("POST", "setup/test", body);
      if (!res.ok || !res.data) {
        show(failure(res), "error");
        return;
      }
      show(describeProbe(res.data), res.data.ok ? "ok" : "error");
    });
  }

  function saveChoice() {
    return busy($("save"), async function () {
      show("Saving\u2026", "info");
      var body = { mode: mode() };
      if (body.mode === "self-hosted") {
        body.apiBaseUrl = $("url").value;
      }
      var res = await call("POST", "setup", body);
      if (!res.ok || !res.data) {
        show("Not saved: " + failure(res), "error");
        return;
      }
      var text = "Saved. Now using " + res.data.active + ". " + describeProbe(res.data.probe);
      if (res.data.rebootstrap === "unavailable") {
        text += " (Re-connect the tenant by restarting the app.)";
      } else if (res.data.rebootstrap === "env_key") {
        text += " (The tenant key is fixed by BEEFLOW_TENANT_KEY: it must be valid for this service.)";
      }
      show(text, res.data.probe && res.data.probe.ok ? "ok" : "error");
      await refresh();
    });
  }

  // Tenant actions: one at a time; each shows its outcome next to its own button.
  async function act(resultId, pending, work) {
    if (state.acting) {
      return;
    }
    state.acting = true;
    renderTenant(state.tenant);
    show(pending, "info", resultId);
    try {
      await work();
    } catch (err) {
      show("Request failed: " + err.message, "error", resultId);
    } finally {
      state.acting = false;
      await refresh();
    }
  }

  // The verification is over (expired, ended by the service): its card goes away, so the
  // explanation goes to the connection card, where it stays visible.
  function ended(res) {
    if (!res.data || res.data.code !== "verification_expired") {
      return false;
    }
    show("", "info", "verify-result");
    if (res.data.keyKept) {
      // A rotation or pairing that did not complete: the note in the connection card says so
      // (after the refresh); what the rotate or pairing button said last is over.
      show("", "info", "rotate-result");
      show("", "info", "pair-result");
      $("tenant-result").hidden = true;
    } else {
      show(actionFailure(res), "error", "tenant-result");
    }
    return true;
  }

  function verifyCode() {
    var input = $("verify-code");
    var code = input.value.replace(/\s+/g, "");
    return act("verify-result", "Verifying\u2026", async function () {
      var res = await call("POST", "setup/verify-email-code", { code: code });
      if (!res.ok || !res.data) {
        if (ended(res)) {
          return;
        }
        input.setAttribute("aria-invalid", "true");
        show(actionFailure(res), "error", "verify-result");
        input.focus();
        return;
      }
      input.removeAttribute("aria-invalid");
      input.value = "";
      show(
        "E-mail address confirmed. Connected" +
          (res.data.organizationName ? " to " + res.data.organizationName : "") +
          " (key fingerprint " + res.data.fingerprint + ").",
        "ok",
        "tenant-result"
      );
      show("", "info", "verify-result");
    });
  }

  function resendCode() {
    return act("verify-result", "Sending a new code\u2026", async function () {
      var res = await call("POST", "setup/resend-email-code", {});
      if (!res.ok || !res.data) {
        if (!ended(res)) {
          show(actionFailure(res), "error", "verify-result");
        }
        return;
      }
      var text = res.data.emailSent
        ? "A new code was sent to " + (res.data.maskedEmail || "the administrator") + " (the address the service holds)."
        : "The service could not send the e-mail; try again later.";
      if (res.data.expiresAt) {
        text += " It is valid until " + when(res.data.expiresAt) + ".";
      }
      show(text, res.data.emailSent ? "ok" : "error", "verify-result");
    });
  }

  function requestCode() {
    return act("verify-result", "Sending a code\u2026", async function () {
      var res = await call("POST", "setup/request-verification-code", {});
      if (!res.ok || !res.data) {
        if (!ended(res)) {
          show(actionFailure(res), "error", "verify-result");
        }
        return;
      }
      var where =
        res.data.sentVia === "retarget"
          ? "your address " + (res.data.maskedEmail || "")
          : (res.data.maskedEmail || "the administrator") +
            " (you have no e-mail address in Nextcloud, so it went to the address the service holds)";
      var text = res.data.emailSent
        ? "A code was sent to " + where + "."
        : "The service could not send the e-mail; try again later.";
      if (res.data.expiresAt) {
        text += " It is valid until " + when(res.data.expiresAt) + ".";
      }
      show(text, res.data.emailSent ? "ok" : "error", "verify-result");
    });
  }

  // Where the code of a new verification went (the connector sent it to the admin who acted).
  function sentText(data) {
    var pending = data.pending || {};
    if (pending.codeSent) {
      return "a code was sent to " + (pending.maskedEmail || "the administrator") + "; enter it above.";
    }
    var problem = data.sendProblem ? " (" + (MESSAGES[data.sendProblem.code] || data.sendProblem.error) + ")" : "";
    return "no code could be sent yet" + problem + "; use the buttons above.";
  }

  function applyPairing() {
    var input = $("pairing-code");
    var code = input.value.trim().toUpperCase();
    return act("pair-result", "Connecting with the pairing code\u2026", async function () {
      var res = await call("POST", "setup/apply-pairing-code", { code: code });
      if (!res.ok || !res.data) {
        input.setAttribute("aria-invalid", "true");
        show(actionFailure(res), "error", "pair-result");
        input.focus();
        return;
      }
      input.removeAttribute("aria-invalid");
      input.value = "";
      if (res.data.status === "awaiting_email_verification") {
        show(
          "The service asks to confirm an e-mail address first: " +
            sentText(res.data) +
            (res.data.previousKeyInUse ? " The current key stays in use until then." : ""),
          "info",
          "pair-result"
        );
        return;
      }
      show("", "info", "pair-result");
      show(
        "Pairing code accepted. Connected to " + (res.data.organizationName || "the organisation") +
          " (key fingerprint " + res.data.fingerprint + ").",
        "ok",
        "tenant-result"
      );
    });
  }

  function rotateKey() {
    var ok = window.confirm(
      "Rotate the tenant key?\n\nThe connector asks the Bee Flow service for a new key and uses it at once. " +
        "Requests in flight may fail once. The current key file is kept as tenant-key.previous.json."
    );
    if (!ok) {
      show("Not rotated.", "info", "rotate-result");
      return Promise.resolve();
    }
    return act("rotate-result", "Rotating\u2026", async function () {
      var res = await call("POST", "setup/rotate-tenant-key", {});
      if (!res.ok || !res.data) {
        show(actionFailure(res), "error", "rotate-result");
        return;
      }
      if (res.data.status === "awaiting_email_verification") {
        show(
          "The service asks to confirm an e-mail address before it issues the key: " +
            sentText(res.data) +
            (res.data.previousKeyInUse ? " The current key stays in use until then." : ""),
          "info",
          "rotate-result"
        );
        return;
      }
      show(
        res.data.keyChanged === false
          ? "The Bee Flow service confirmed the key in use (fingerprint " +
              res.data.fingerprint +
              "): it keeps one key per organisation."
          : "New key in use (fingerprint " + res.data.fingerprint + "; was " + (res.data.previousFingerprint || "none") + ").",
        "ok",
        "rotate-result"
      );
    });
  }

  function renderSignatures(sigs) {
    var box = $("require-v3");
    var locked = sigs.requireV3Source === "env";
    box.checked = !!sigs.requireV3;
    box.disabled = locked || sigs.requireV3 === undefined || state.acting;
    $("sig-lock").hidden = !locked;
  }

  function saveSignatures() {
    var wanted = $("require-v3").checked;
    return act("sig-result", "Saving\u2026", async function () {
      var res = await call("POST", "setup/nc-signatures", { requireV3: wanted });
      if (!res.ok || !res.data) {
        show(failure(res), "error", "sig-result");
        return;
      }
      show(
        res.data.requireV3
          ? "Only v3 signatures are accepted now."
          : "v3 signatures and older ones are accepted now.",
        "ok",
        "sig-result"
      );
    });
  }

  function start() {
    $("mode-cloud").addEventListener("change", syncInputs);
    $("mode-self").addEventListener("change", function () {
      syncInputs();
      $("url").focus();
    });
    $("test").addEventListener("click", testConnection);
    $("save").addEventListener("click", saveChoice);
    $("verify").addEventListener("click", verifyCode);
    $("resend").addEventListener("click", resendCode);
    $("request-code").addEventListener("click", requestCode);
    $("pair").addEventListener("click", applyPairing);
    $("rotate").addEventListener("click", rotateKey);
    $("require-v3").addEventListener("change", saveSignatures);
    $("verify-code").addEventListener("keydown", function (event) {
      if (event.key === "Enter") {
        verifyCode();
      }
    });
    $("pairing-code").addEventListener("input", function (event) {
      var el = event.target;
      var upper = el.value.toUpperCase();
      if (upper !== el.value) {
        var at = el.selectionStart;
        el.value = upper;
        el.setSelectionRange(at, at);
      }
    });
    $("pairing-code").addEventListener("keydown", function (event) {
      if (event.key === "Enter") {
        applyPairing();
      }
    });
    refresh();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
