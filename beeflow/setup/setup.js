/* Bee Flow setup picker. Every request is relative to the page's own URL: under Nextcloud the
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

  var state = { cloudUrl: "", locked: false, loaded: false };

  function show(text, kind) {
    var el = $("result");
    el.textContent = text;
    el.dataset.kind = kind || "info";
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
    var labels = {
      ok: "Connected",
      initialising: "Connecting\u2026",
      awaiting_email_verification: "Waiting for e-mail verification",
      awaiting_admin_approval: "Waiting for approval",
      failed: "Failed",
    };
    return labels[tenant.status] || tenant.status || "unknown";
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
    ts.textContent = tenantText(tenant);
    ts.className =
      tenant.status === "ok" ? "state-ok" : tenant.status === "failed" ? "state-bad" : "state-wait";
    if (tenant.lastError && tenant.lastError.error) {
      ts.title = tenant.lastError.error;
    }
    $("fingerprint").textContent = tenant.fingerprint || "";
    var transport = s.transport || {};
    $("transport").textContent = transport.demo
      ? "Demo stand-in proxy (streaming)"
      : transport.mode === "harp"
        ? "HaRP (streaming)"
        : "Legacy proxy (replies arrive whole)";
    var note = $("transport-note");
    note.textContent = transport.note || "";
    note.hidden = !transport.note;

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
      var extra = [p.version && "version " + p.version, p.tier && "tier " + p.tier].filter(Boolean);
      return "Connection OK (HTTP " + p.status + (extra.length ? ", " + extra.join(", ") : "") + ")";
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

  function start() {
    $("mode-cloud").addEventListener("change", syncInputs);
    $("mode-self").addEventListener("change", function () {
      syncInputs();
      $("url").focus();
    });
    $("test").addEventListener("click", testConnection);
    $("save").addEventListener("click", saveChoice);
    refresh();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
