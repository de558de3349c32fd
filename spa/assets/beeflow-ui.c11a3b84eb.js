/* Bee Flow connector UI: a small chat shell (no framework, no build step).
 *
 * Works under any base path: /index.php/apps/app_api/proxy/bee_flow/, /exapps/bee_flow/ or /.
 * Every request uses a URL relative to the document's own directory, never an absolute path.
 * PATCH is tunnelled as POST + X-HTTP-Method-Override (Nextcloud's proxy answers PATCH with 405).
 */
(function () {
  "use strict";

  /* The service's own routes (its routes/ai.js is mounted at /ai, not under /api). */
  var CHAT_PATH = "ai/chat/direct/stream";
  var CONVERSATION_PATH = "ai/direct/conversations/";

  /* The directory of this document: ".../bee_flow/index.html" and ".../bee_flow/" give
   * ".../bee_flow/". (".../bee_flow" without the slash never gets here: its relative asset
   * URLs point one level up and 404; docs/ui.md says why that cannot be fixed.) Exposed for the
   * tests. */
  function deriveBase(pathname) {
    var path = pathname.replace(/\/index\.html$/, "/");
    if (path.charAt(path.length - 1) !== "/") {
      path += "/";
    }
    return path;
  }

  var BASE = deriveBase(window.location.pathname);

  function url(relative) {
    return new URL(BASE + relative, window.location.origin).toString();
  }

  function $(id) {
    return document.getElementById(id);
  }

  /* ------------------------------------------------------------ connection state */

  function setConnection(state, text, detail) {
    var el = $("conn");
    el.dataset.state = state;
    el.dataset.code = "";
    el.textContent = text;
    el.title = detail || "";
    $("setup-link").hidden = true;
  }

  /* Codes only an administrator can clear: the answer links the setup page (a connector path,
   * relative like every other URL here; it refuses anyone but a Nextcloud administrator). */
  var SETUP_CODES = ["tenant_key_missing", "tenant_unavailable"];

  function needsSetup(code) {
    return SETUP_CODES.indexOf(code) !== -1;
  }

  function setupLink() {
    var link = document.createElement("a");
    link.href = url("setup");
    link.target = "_blank";
    link.rel = "noopener";
    link.className = "setup-link";
    link.textContent = "Administrators: open the setup page";
    return link;
  }

  async function readJson(response) {
    var type = response.headers.get("Content-Type") || "";
    if (type.indexOf("json") === -1) {
      return null;
    }
    try {
      return await response.json();
    } catch (err) {
      return null;
    }
  }

  /* The server's own words from a JSON error body: `error` (the connector and the service), or
   * `message` / `detail` from anything in between. */
  function serverMessage(body) {
    if (!body || typeof body !== "object") {
      return "";
    }
    var keys = ["error", "message", "detail"];
    for (var i = 0; i < keys.length; i++) {
      var value = body[keys[i]];
      if (typeof value === "string" && value) {
        return value;
      }
      if (Array.isArray(value)) {
        var parts = value
          .map(function (item) {
            return item && typeof item.msg === "string" ? item.msg : "";
          })
          .filter(Boolean);
        if (parts.length) {
          return parts.join("; ");
        }
      }
    }
    return "";
  }

  var SESSION_TEXT = "Your Nextcloud session may have expired \u2014 reload the page";

  /* Plain sentences for the codes a person can act on (the code itself stays in the tooltip). */
  function codeSentence(code) {
    if (code === "nextcloud_email_missing") {
      return "Your Nextcloud account has no e-mail address \u2014 add one under Personal settings, then reload";
    }
    if (code === "NC_ONBOARDING_PENDING") {
      return "Bee Flow is being set up by your administrator \u2014 try again in a few minutes";
    }
    if (code === "tenant_key_missing" || code === "tenant_unavailable") {
      return "Not connected to the Bee Flow service yet \u2014 an administrator has to finish the setup";
    }
    if (code === "shutting_down") {
      return "The connector is restarting \u2014 try again shortly";
    }
    if (code === "rate_limited" || code === "service_rate_limited") {
      return "Too many requests \u2014 wait a moment and try again";
    }
    if (
      code === "upstream_unreachable" ||
      code === "upstream_connect_timeout" ||
      code === "upstream_tls_error"
    ) {
      return "The Bee Flow service cannot be reached";
    }
    if (code === "upstream_timeout" || code === "upstream_headers_timeout" || code === "upstream_idle") {
      return "The Bee Flow service is not answering";
    }
    if (code.indexOf("upstream_") === 0 || code === "service_error") {
      return "The Bee Flow service is unavailable";
    }
    return "";
  }

  /* What went wrong with a non-2xx answer, for a person: {state, text, detail, reload}.
   * 401/403/404 without a code of ours is the front refusing a lost session: Nextcloud's PHP
   * proxy answers 404 (HTML), HaRP's HAProxy 403, and the service 401 when it rejects the token. */
  function describeFailure(status, body) {
    var code = body && typeof body.code === "string" ? body.code : "";
    var said = serverMessage(body);
    var detail = (code ? code + ": " : "") + (said || "HTTP " + status);
    var sentence = codeSentence(code);
    if (sentence) {
      return { state: "degraded", text: sentence, code: code, detail: detail, reload: false };
    }
    var sessionCode = code === "" || code.indexOf("appapi_") === 0 || code === "admin_required";
    if ((status === 401 || status === 403 || status === 404) && sessionCode) {
      return {
        state: "degraded",
        text: SESSION_TEXT + (said ? " (" + said + ")" : ""),
        code: code,
        detail: detail,
        reload: true,
      };
    }
    if (!body && status >= 500) {
      // Not our JSON: the front (Nextcloud, HaRP, a reverse proxy) could not reach the connector.
      return {
        state: "offline",
        text: "Connector unreachable (HTTP " + status + ")",
        code: "",
        detail: detail,
        reload: false,
      };
    }
    return {
      state: "degraded",
      text: said || "HTTP " + status,
      code: code,
      detail: detail,
      reload: false,
    };
  }

  /* Only `api/health`, never the lifecycle paths (`heartbeat`, `init`, `enabled`): HaRP refuses
   * those from a browser and counts each refusal towards banning the client's IP. */
  async function checkConnection() {
    setConnection("checking", "Checking connection\u2026");
    var health;
    try {
      health = await fetch(url("api/health"), {
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
    } catch (err) {
      setConnection("offline", "Connector unreachable", String(err));
      return;
    }
    var body = await readJson(health);
    if (health.ok) {
      // The service's health: {status, timestamp, appVersion (its build), otel}.
      var build = body && body.appVersion ? " (" + body.appVersion + ")" : "";
      setConnection("connected", "Connected" + build, "Bee Flow service answered");
      return;
    }
    var failure = describeFailure(health.status, body);
    setConnection(failure.state, failure.text, failure.detail);
    $("conn").dataset.code = failure.code;
    if (needsSetup(failure.code)) {
      $("setup-link").href = url("setup");
      $("setup-link").hidden = false;
    }
  }

  /* ------------------------------------------------------------ SSE reading */

  /* Feed text in; get complete events out. Handles \n, \r\n and \r line ends, comments,
   * multi-line data, and events split across network chunks. */
  function SseParser(onEvent) {
    this.buffer = "";
    this.event = "";
    this.data = [];
    this.onEvent = onEvent;
  }

  SseParser.prototype.feed = function (text) {
    this.buffer += text;
    var match;
    var lineEnd = /\r\n|\r|\n/;
    while ((match = lineEnd.exec(this.buffer)) !== null) {
      // A lone \r at the very end may be the first half of \r\n: wait for more.
      if (match[0] === "\r" && match.index === this.buffer.length - 1) {
        break;
      }
      var line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      this.line(line);
    }
  };

  SseParser.prototype.line = function (line) {
    if (line === "") {
      if (this.data.length || this.event) {
        this.onEvent(this.event || "message", this.data.join("\n"));
      }
      this.event = "";
      this.data = [];
      return;
    }
    if (line.charAt(0) === ":") {
      return; // keep-alive comment
    }
    var colon = line.indexOf(":");
    var field = colon === -1 ? line : line.slice(0, colon);
    var value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.charAt(0) === " ") {
      value = value.slice(1);
    }
    if (field === "event") {
      this.event = value;
    } else if (field === "data") {
      this.data.push(value);
    }
  };

  SseParser.prototype.end = function () {
    if (this.buffer) {
      this.line(this.buffer);
      this.buffer = "";
    }
    this.line("");
  };

  function parseData(data) {
    try {
      return JSON.parse(data);
    } catch (err) {
      return null;
    }
  }

  /* ------------------------------------------------------------ chat */

  var conversation = { id: null, title: "" };
  var busy = false;

  function addBubble(role, text) {
    var item = document.createElement("li");
    item.className = "msg msg-" + role;
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Bee Flow";
    var body = document.createElement("div");
    body.className = "text";
    body.textContent = text || "";
    item.appendChild(who);
    item.appendChild(body);
    $("log").appendChild(item);
    item.scrollIntoView({ block: "end" });
    return item;
  }

  function setBusy(value) {
    busy = value;
    $("send").disabled = value;
    $("message").setAttribute("aria-busy", value ? "true" : "false");
  }

  function setConversation(id, title) {
    conversation.id = id;
    if (title !== undefined) {
      conversation.title = title;
      $("title").value = title;
    }
    $("title").disabled = !id;
    $("rename").disabled = !id;
    document.body.dataset.conversation = id || "";
  }

  function showNotice(text, kind) {
    var el = $("notice");
    el.textContent = text;
    el.title = "";
    el.dataset.kind = kind || "info";
    el.hidden = !text;
  }

  /* A failure shown in `el` (a reply bubble's text or the notice): the sentence, and a reload
   * button when reloading the page is what helps. */
  function showFailure(el, prefix, failure) {
    el.textContent = prefix + failure.text + (failure.code ? " [" + failure.code + "]" : "");
    el.title = failure.detail;
    if (needsSetup(failure.code)) {
      el.appendChild(document.createTextNode(" "));
      el.appendChild(setupLink());
    }
    if (failure.reload) {
      var button = document.createElement("button");
      button.type = "button";
      button.className = "reload";
      button.textContent = "Reload";
      button.addEventListener("click", function () {
        window.location.reload();
      });
      el.appendChild(document.createTextNode(" "));
      el.appendChild(button);
    }
  }

  async function failureOf(response) {
    return describeFailure(response.status, await readJson(response));
  }

  async function send(message) {
    setBusy(true);
    showNotice("");
    addBubble("user", message);
    var bubble = addBubble("assistant", "");
    var text = bubble.querySelector(".text");
    bubble.dataset.state = "waiting";
    var received = 0;
    var finished = false;
    var failed = false;

    function onEvent(name, data) {
      var payload = parseData(data);
      if (name === "conversation_created") {
        var id = payload && (payload.conversationId || payload.id);
        if (id) {
          setConversation(String(id), (payload && payload.title) || "");
        }
      } else if (name === "content") {
        var chunk = payload && typeof payload.text === "string" ? payload.text : "";
        if (chunk) {
          received += 1;
          text.textContent += chunk;
          bubble.dataset.state = "streaming";
          bubble.dataset.chunks = String(received);
          bubble.scrollIntoView({ block: "end" });
        }
      } else if (name === "done") {
        finished = true;
      } else if (name === "error") {
        failed = true;
        bubble.dataset.state = "error";
        text.textContent += serverMessage(payload) || "The service reported an error";
      }
    }

    try {
      var body = { message: message };
      if (conversation.id) {
        body.conversationId = conversation.id;
      }
      var response = await fetch(url(CHAT_PATH), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        cache: "no-store",
      });
      if (!response.ok) {
        failed = true;
        bubble.dataset.state = "error";
        showFailure(text, "Could not send: ", await failureOf(response));
        return;
      }
      var type = response.headers.get("Content-Type") || "";
      if (type.indexOf("text/event-stream") === -1 || !response.body) {
        failed = true;
        bubble.dataset.state = "error";
        text.textContent = "Unexpected reply (" + (type || "no content type") + ")";
        return;
      }
      var parser = new SseParser(onEvent);
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      for (;;) {
        var step = await reader.read();
        if (step.done) {
          break;
        }
        parser.feed(decoder.decode(step.value, { stream: true }));
      }
      parser.feed(decoder.decode());
      parser.end();
    } catch (err) {
      failed = true;
      bubble.dataset.state = "error";
      text.textContent += (text.textContent ? "\n" : "") + "Connection lost: " + err.message;
      return;
    } finally {
      setBusy(false);
      $("message").focus();
    }
    if (failed) {
      return;
    }
    if (!received) {
      // A 200 with nothing usable must never look like an empty answer (reference 3.5).
      bubble.dataset.state = "error";
      text.textContent = "The service sent an empty reply.";
    } else if (!finished) {
      bubble.dataset.state = "incomplete";
      showNotice("The reply ended early; it may be incomplete.", "warning");
    } else {
      bubble.dataset.state = "done";
    }
  }

  async function rename() {
    var title = $("title").value.trim();
    if (!conversation.id || !title) {
      return;
    }
    $("rename").disabled = true;
    try {
      // Nextcloud's proxy has no PATCH route: tunnel it (the connector restores the verb).
      var response = await fetch(url(CONVERSATION_PATH + encodeURIComponent(conversation.id)), {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-HTTP-Method-Override": "PATCH" },
        body: JSON.stringify({ title: title }),
        cache: "no-store",
      });
      if (!response.ok) {
        showNotice("", "error");
        showFailure($("notice"), "Rename failed: ", await failureOf(response));
        $("notice").hidden = false;
        return;
      }
      var body = await readJson(response);
      setConversation(conversation.id, (body && body.title) || title);
      showNotice("Conversation renamed.", "info");
    } catch (err) {
      showNotice("Rename failed: " + err.message, "error");
    } finally {
      $("rename").disabled = !conversation.id;
    }
  }

  function newChat() {
    setConversation(null, "");
    $("log").textContent = "";
    showNotice("");
    $("message").focus();
  }

  /* ------------------------------------------------------------ files from Nextcloud */

  /* A Files action opens the UI with ?ncFileIds=12,13[&ncFileAction=ask|summarise] (the embed
   * script passes on what Nextcloud's Files app sent): shown above the chat, and put into the
   * message so the service knows which files are meant. Anything else in those parameters is
   * ignored. */
  function fileContext(search) {
    var params = new URLSearchParams(search || "");
    var raw = params.get("ncFileIds") || "";
    if (!/^[0-9]{1,19}(,[0-9]{1,19}){0,99}$/.test(raw)) {
      return null;
    }
    var action = params.get("ncFileAction");
    return {
      ids: raw.split(","),
      action: action === "ask" || action === "summarise" ? action : "",
    };
  }

  function showFileContext(ctx) {
    if (!ctx) {
      return;
    }
    var list = ctx.ids.map(function (id) {
      return "#" + id;
    });
    var el = $("context");
    el.textContent =
      (ctx.ids.length === 1 ? "Nextcloud file " : "Nextcloud files ") + list.join(", ") +
      (ctx.action === "summarise" ? " \u2014 Summarise with Bee Flow" : " \u2014 Ask Bee Flow");
    el.hidden = false;
    document.body.dataset.fileIds = ctx.ids.join(",");
    var noun = ctx.ids.length === 1 ? "the Nextcloud file with id " : "the Nextcloud files with ids ";
    $("message").value =
      ctx.action === "summarise"
        ? "Summarise " + noun + ctx.ids.join(", ") + "."
        : "About " + noun + ctx.ids.join(", ") + ": ";
  }

  function start() {
    $("composer").addEventListener("submit", function (event) {
      event.preventDefault();
      var input = $("message");
      var message = input.value.trim();
      if (!message || busy) {
        return;
      }
      input.value = "";
      send(message);
    });
    $("message").addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("rename").addEventListener("click", rename);
    $("new").addEventListener("click", newChat);
    $("recheck").addEventListener("click", checkConnection);
    document.body.dataset.base = BASE;
    setConversation(null, "");
    showFileContext(fileContext(window.location.search));
    checkConnection();
  }

  window.BeeFlowUI = {
    deriveBase: deriveBase,
    SseParser: SseParser,
    describeFailure: describeFailure,
    fileContext: fileContext,
    base: BASE,
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
