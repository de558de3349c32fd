/* Bee Flow connector UI: a small chat shell (no framework, no build step).
 *
 * Works under any base path: /index.php/apps/app_api/proxy/bee_flow/, /exapps/bee_flow/ or /.
 * Every request uses a URL relative to the document's own directory, never an absolute path.
 * PATCH is tunnelled as POST + X-HTTP-Method-Override (Nextcloud's proxy answers PATCH with 405).
 * Replies are rendered by beeflow-md.js, which builds elements and never parses HTML; what the
 * connector and the service answer is read by beeflow-service.js.
 */
(function () {
  "use strict";

  /* The service's own routes (its routes/ai.js is mounted at /ai, not under /api), the ones its
   * own UI (agent-hub) calls for direct chats. */
  var CHAT_PATH = "ai/chat/direct/stream";
  var CONVERSATIONS_PATH = "ai/direct/conversations";
  var CONVERSATION_PATH = "ai/direct/conversations/";
  var RENDER_INTERVAL = 50; // ms between re-renders of a streaming reply
  var RECHECK_AFTER = 30000; // ms: a tab shown again re-checks a connection older than this
  var Markdown = window.BeeFlowMarkdown;
  var Service = window.BeeFlowService;
  var readJson = Service.readJson;
  var serverMessage = Service.serverMessage;
  var describeFailure = Service.describeFailure;
  var SseParser = Service.SseParser;
  var parseData = Service.parseData;
  var contentText = Service.contentText;
  var validId = Service.validId;
  var summary = Service.summary;

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
  var STORAGE_KEY = "beeflow:" + BASE + ":conversation";

  function url(relative) {
    return new URL(BASE + relative, window.location.origin).toString();
  }

  function $(id) {
    return document.getElementById(id);
  }

  function conversationUrl(id) {
    return url(CONVERSATION_PATH + encodeURIComponent(id));
  }

  async function failureOf(response) {
    return describeFailure(response.status, await readJson(response));
  }

  function reloadButton() {
    var button = document.createElement("button");
    button.type = "button";
    button.className = "reload";
    button.textContent = "Reload";
    button.addEventListener("click", function () {
      window.location.reload();
    });
    return button;
  }

  /* A failure shown in `el` (a reply bubble's text or the notice): the sentence, and a reload
   * button when reloading the page is what helps. */
  function showFailure(el, prefix, failure) {
    el.textContent = prefix + failure.text + (failure.code ? " [" + failure.code + "]" : "");
    el.title = failure.detail;
    if (failure.reload) {
      el.appendChild(document.createTextNode(" "));
      el.appendChild(reloadButton());
    }
  }

  function showNotice(text, kind) {
    var el = $("notice");
    el.textContent = text;
    el.title = "";
    el.dataset.kind = kind || "info";
    el.hidden = !text;
  }

  function noticeFailure(prefix, failure) {
    var el = $("notice");
    el.dataset.kind = "error";
    showFailure(el, prefix, failure);
    el.hidden = false;
  }

  /* ------------------------------------------------------------ connection state */

  var connection = { state: "checking", text: "", reload: false, checkedAt: 0, seq: 0 };
  var busy = false;

  /* Send is only possible while connected; otherwise the hint under the composer says why. */
  function updateComposer() {
    var connected = connection.state === "connected";
    $("send").disabled = busy || !connected;
    $("message").setAttribute("aria-busy", busy ? "true" : "false");
    var hint = $("send-hint");
    hint.textContent = "";
    hint.dataset.state = connection.state;
    if (connected) {
      hint.hidden = true;
      return;
    }
    hint.textContent =
      connection.state === "checking"
        ? "Checking the connection\u2026"
        : "Sending is paused: " + connection.text;
    if (connection.reload) {
      hint.appendChild(document.createTextNode(" "));
      hint.appendChild(reloadButton());
    }
    hint.hidden = false;
  }

  function setConnection(state, text, detail, code, reload) {
    var el = $("conn");
    el.dataset.state = state;
    el.dataset.code = code || "";
    el.textContent = text;
    el.title = detail || "";
    // Retry only when there is something to retry: not while connected or checking.
    $("recheck").hidden = state !== "offline" && state !== "degraded";
    connection.state = state;
    connection.text = text;
    connection.reload = !!reload;
    updateComposer();
  }

  /* Only `api/health`, never the lifecycle paths (`heartbeat`, `init`, `enabled`): HaRP refuses
   * those from a browser and counts each refusal towards banning the client's IP. */
  async function checkConnection() {
    var seq = ++connection.seq;
    connection.checkedAt = Date.now();
    setConnection("checking", "Checking connection\u2026");
    var health;
    try {
      health = await fetch(url("api/health"), {
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
    } catch (err) {
      if (seq === connection.seq) {
        setConnection("offline", "Connector unreachable", String(err));
      }
      return;
    }
    var body = await readJson(health);
    if (seq !== connection.seq) {
      return; // a newer check is under way
    }
    if (health.ok) {
      // The service's health: {status, timestamp, appVersion (its build), otel}.
      var build = body && body.appVersion ? " (" + body.appVersion + ")" : "";
      setConnection("connected", "Connected" + build, "Bee Flow service answered");
      if (!history.loaded && !history.loading) {
        loadHistory();
      }
      return;
    }
    var failure = describeFailure(health.status, body);
    setConnection(failure.state, failure.text, failure.detail, failure.code, failure.reload);
  }

  /* ------------------------------------------------------------ messages */

  function nearBottom() {
    var log = $("log");
    return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  }

  function scrollToEnd() {
    var log = $("log");
    log.scrollTop = log.scrollHeight;
  }

  function addBubble(role, text) {
    var follow = nearBottom();
    var item = document.createElement("li");
    item.className = "msg msg-" + role;
    var who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Bee Flow";
    var body = document.createElement("div");
    body.className = "text";
    if (role === "assistant") {
      body.classList.add("md");
      body.appendChild(Markdown.render(text || ""));
    } else {
      body.textContent = text || "";
    }
    item.appendChild(who);
    item.appendChild(body);
    $("log").appendChild(item);
    if (follow) {
      scrollToEnd();
    }
    return item;
  }

  /* A reply being streamed: its Markdown is re-rendered at most every RENDER_INTERVAL ms
   * (the first piece at once), always from the whole text received so far. */
  function Reply(bubble) {
    this.bubble = bubble;
    this.text = bubble.querySelector(".text");
    this.source = "";
    this.chunks = 0;
    this.timer = null;
    this.renderedAt = 0;
  }

  Reply.prototype.append = function (chunk) {
    this.source += chunk;
    this.chunks += 1;
    this.schedule();
  };

  Reply.prototype.replace = function (text) {
    this.source = text;
    this.schedule();
  };

  Reply.prototype.schedule = function () {
    if (this.timer !== null) {
      return;
    }
    var wait = this.renderedAt + RENDER_INTERVAL - Date.now();
    if (wait <= 0) {
      this.render();
      return;
    }
    var self = this;
    this.timer = window.setTimeout(function () {
      self.render();
    }, wait);
  };

  Reply.prototype.render = function () {
    if (this.timer !== null) {
      window.clearTimeout(this.timer);
      this.timer = null;
    }
    var follow = nearBottom();
    this.renderedAt = Date.now();
    this.text.textContent = "";
    this.text.appendChild(Markdown.render(this.source));
    if (this.chunks) {
      this.bubble.dataset.chunks = String(this.chunks);
      if (this.bubble.dataset.state === "waiting") {
        this.bubble.dataset.state = "streaming";
      }
    }
    if (follow) {
      scrollToEnd();
    }
  };

  /* The reply cannot be shown as an answer: what went wrong, after whatever already arrived. */
  Reply.prototype.fail = function (text) {
    this.render();
    var line = document.createElement("p");
    line.className = "reply-error";
    line.textContent = text;
    this.text.appendChild(line);
    this.bubble.dataset.state = "error";
    return line;
  };

  /* ------------------------------------------------------------ conversations */

  var conversation = { id: null, title: "" };
  var history = { items: [], loaded: false, loading: false, seq: 0 };

  function remember(id) {
    try {
      if (id) {
        window.sessionStorage.setItem(STORAGE_KEY, id);
      } else {
        window.sessionStorage.removeItem(STORAGE_KEY);
      }
    } catch (err) {
      // Storage blocked: a reload then starts a new chat, the list still has the old ones.
    }
  }

  function remembered() {
    try {
      return window.sessionStorage.getItem(STORAGE_KEY);
    } catch (err) {
      return null;
    }
  }

  function titleText(title) {
    return typeof title === "string" && title.trim() ? title : "Untitled conversation";
  }

  function setConversation(id, title) {
    conversation.id = id;
    if (title !== undefined) {
      conversation.title = title;
    }
    var heading = $("conv-title");
    heading.textContent = id ? titleText(conversation.title) : "New conversation";
    heading.title = id ? titleText(conversation.title) : "";
    // A new chat has nothing to rename or delete yet.
    $("rename").hidden = !id;
    $("delete").hidden = !id;
    $("rename").disabled = busy;
    $("delete").disabled = busy;
    document.body.dataset.conversation = id || "";
    markCurrent();
  }

  function setBusy(value) {
    busy = value;
    $("rename").disabled = value;
    $("delete").disabled = value;
    $("new").disabled = value;
    var buttons = $("history-list").querySelectorAll("button");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].disabled = value;
    }
    updateComposer();
  }

  function formatWhen(value) {
    var date = new Date(value);
    if (!value || isNaN(date.getTime())) {
      return "";
    }
    var now = new Date();
    if (date.toDateString() === now.toDateString()) {
      return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    var options = { day: "numeric", month: "short" };
    if (date.getFullYear() !== now.getFullYear()) {
      options.year = "numeric";
    }
    return date.toLocaleDateString([], options);
  }

  function markCurrent() {
    var buttons = $("history-list").querySelectorAll("button.conv");
    for (var i = 0; i < buttons.length; i++) {
      if (buttons[i].dataset.id === conversation.id) {
        buttons[i].setAttribute("aria-current", "true");
      } else {
        buttons[i].removeAttribute("aria-current");
      }
    }
  }

  function renderHistory() {
    var list = $("history-list");
    list.textContent = "";
    var items = history.items
      .filter(function (item) {
        return item.pinned;
      })
      .concat(
        history.items.filter(function (item) {
          return !item.pinned;
        }),
      );
    items.forEach(function (item) {
      var li = document.createElement("li");
      var button = document.createElement("button");
      button.type = "button";
      button.className = "conv";
      button.dataset.id = item.id;
      button.disabled = busy;
      var name = document.createElement("span");
      name.className = "conv-name";
      name.textContent = titleText(item.title);
      button.title = titleText(item.title);
      var when = document.createElement("span");
      when.className = "conv-when";
      when.textContent = (item.pinned ? "Pinned \u00b7 " : "") + formatWhen(item.updated);
      button.appendChild(name);
      button.appendChild(when);
      button.addEventListener("click", function () {
        openConversation(item.id);
      });
      li.appendChild(button);
      list.appendChild(li);
    });
    if (history.loaded) {
      historyStatus(items.length ? "" : "No conversations yet.");
    }
    markCurrent();
  }

  function historyStatus(text, kind) {
    var el = $("history-status");
    el.textContent = text;
    el.title = "";
    el.dataset.kind = kind || "info";
    el.hidden = !text;
  }

  /* Put a conversation at the top of the list (it just changed) with what we know of it. */
  function touchHistory(id, fields) {
    var existing = null;
    history.items = history.items.filter(function (item) {
      if (item.id === id) {
        existing = item;
        return false;
      }
      return true;
    });
    var item = existing || { id: id, title: "", updated: "", pinned: false };
    if (fields.title !== undefined) {
      item.title = fields.title;
    }
    item.updated = new Date().toISOString();
    history.items.unshift(item);
    renderHistory();
  }

  function dropFromHistory(id) {
    history.items = history.items.filter(function (item) {
      return item.id !== id;
    });
    renderHistory();
  }

  /* GET ai/direct/conversations: the service's list of the user's direct chats, newest first. */
  async function loadHistory() {
    var seq = ++history.seq;
    history.loading = true;
    historyStatus("Loading conversations\u2026");
    var response;
    try {
      response = await fetch(url(CONVERSATIONS_PATH), {
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
    } catch (err) {
      if (seq === history.seq) {
        history.loading = false;
        historyStatus("Could not load the conversations: connection lost", "error");
      }
      return;
    }
    var body = await readJson(response);
    if (seq !== history.seq) {
      return;
    }
    history.loading = false;
    if (!response.ok) {
      var failure = describeFailure(response.status, body);
      var el = $("history-status");
      el.dataset.kind = "error";
      showFailure(el, "Could not load the conversations: ", failure);
      el.hidden = false;
      return;
    }
    if (!Array.isArray(body)) {
      historyStatus("Could not load the conversations: unexpected answer", "error");
      return;
    }
    history.items = body.map(summary).filter(Boolean);
    history.loaded = true;
    renderHistory();
    // After a reload: reopen the conversation this tab had open, if it still exists.
    var last = remembered();
    if (!conversation.id && last && !busy) {
      if (history.items.some(function (item) { return item.id === last; })) {
        openConversation(last);
      } else {
        remember(null);
      }
    }
  }

  function closeHistoryPanel() {
    document.body.dataset.history = "";
    $("toggle-history").setAttribute("aria-expanded", "false");
  }

  function toggleHistoryPanel() {
    var open = document.body.dataset.history !== "open";
    document.body.dataset.history = open ? "open" : "";
    $("toggle-history").setAttribute("aria-expanded", open ? "true" : "false");
  }

  /* GET ai/direct/conversations/<id>: the conversation with its messages. */
  async function openConversation(id) {
    if (busy) {
      return;
    }
    closeHistoryPanel();
    cancelRename();
    hideConfirm();
    showNotice("");
    $("log").setAttribute("aria-busy", "true");
    var response;
    try {
      response = await fetch(conversationUrl(id), {
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
    } catch (err) {
      $("log").setAttribute("aria-busy", "false");
      showNotice("Could not open the conversation: " + err.message, "error");
      return;
    }
    var body = await readJson(response);
    $("log").setAttribute("aria-busy", "false");
    if (response.status === 404 && body && !body.code) {
      // The service's "Conversation not found": deleted elsewhere.
      dropFromHistory(id);
      if (conversation.id === id || !conversation.id) {
        newChat();
      }
      showNotice("That conversation no longer exists.", "warning");
      return;
    }
    if (!response.ok) {
      noticeFailure("Could not open the conversation: ", describeFailure(response.status, body));
      return;
    }
    if (!body || typeof body !== "object") {
      showNotice("Could not open the conversation: unexpected answer", "error");
      return;
    }
    var log = $("log");
    log.textContent = "";
    var messages = Array.isArray(body.messages) ? body.messages : [];
    messages.forEach(function (message) {
      if (!message || (message.role !== "user" && message.role !== "assistant")) {
        return;
      }
      var text = contentText(message.content);
      if (!text.trim()) {
        return;
      }
      var bubble = addBubble(message.role, text);
      if (message.role === "assistant") {
        bubble.dataset.state = "done";
      }
    });
    var known = history.items.filter(function (item) {
      return item.id === id;
    })[0];
    setConversation(id, typeof body.title === "string" ? body.title : known ? known.title : "");
    remember(id);
    scrollToEnd();
  }

  function newChat() {
    cancelRename();
    hideConfirm();
    closeHistoryPanel();
    setConversation(null, "");
    remember(null);
    $("log").textContent = "";
    showNotice("");
    $("message").focus();
  }

  /* ------------------------------------------------------------ rename and delete */

  function startRename() {
    if (!conversation.id) {
      return;
    }
    hideConfirm();
    document.body.dataset.renaming = "true";
    $("rename-form").hidden = false;
    var input = $("title");
    input.value = conversation.title;
    input.focus();
    input.select();
  }

  function cancelRename() {
    document.body.dataset.renaming = "";
    $("rename-form").hidden = true;
  }

  async function rename(event) {
    event.preventDefault();
    var title = $("title").value.trim();
    if (!conversation.id || !title) {
      return;
    }
    var id = conversation.id;
    $("rename-save").disabled = true;
    try {
      // Nextcloud's proxy has no PATCH route: tunnel it (the connector restores the verb).
      var response = await fetch(conversationUrl(id), {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-HTTP-Method-Override": "PATCH" },
        body: JSON.stringify({ title: title }),
        cache: "no-store",
      });
      if (!response.ok) {
        noticeFailure("Rename failed: ", await failureOf(response));
        return;
      }
      await response.text(); // {success: true}; read, so the request completes
      if (conversation.id === id) {
        setConversation(id, title);
      }
      touchHistory(id, { title: title });
      cancelRename();
      showNotice("Conversation renamed.", "info");
    } catch (err) {
      showNotice("Rename failed: " + err.message, "error");
    } finally {
      $("rename-save").disabled = false;
    }
  }

  function askDelete() {
    if (!conversation.id) {
      return;
    }
    cancelRename();
    $("confirm-text").textContent =
      "Delete \u201c" + titleText(conversation.title) + "\u201d? This cannot be undone.";
    $("confirm-delete").hidden = false;
    $("delete-no").focus();
  }

  function hideConfirm() {
    $("confirm-delete").hidden = true;
  }

  /* DELETE ai/direct/conversations/<id> (Nextcloud's proxy has a DELETE route). */
  async function deleteConversation() {
    var id = conversation.id;
    if (!id) {
      return;
    }
    $("delete-yes").disabled = true;
    try {
      var response = await fetch(conversationUrl(id), { method: "DELETE", cache: "no-store" });
      var body = await readJson(response);
      var gone = response.status === 404 && body && !body.code;
      if (!response.ok && !gone) {
        hideConfirm();
        noticeFailure("Delete failed: ", describeFailure(response.status, body));
        return;
      }
      dropFromHistory(id);
      newChat();
      showNotice("Conversation deleted.", "info");
    } catch (err) {
      hideConfirm();
      showNotice("Delete failed: " + err.message, "error");
    } finally {
      $("delete-yes").disabled = false;
    }
  }

  /* ------------------------------------------------------------ chat */

  async function send(message) {
    setBusy(true);
    showNotice("");
    hideConfirm();
    addBubble("user", message);
    var bubble = addBubble("assistant", "");
    bubble.dataset.state = "waiting";
    var reply = new Reply(bubble);
    var asked = conversation.id;
    var finished = false;
    var failed = false;

    function restoreMessage() {
      // Nothing lost: a message that did not go through goes back into an empty composer.
      if (!$("message").value) {
        $("message").value = message;
      }
    }

    function finish() {
      finished = true;
      reply.render();
      if (!reply.chunks && !reply.source) {
        // A 200 with nothing usable must never look like an empty answer (reference 3.5).
        reply.fail("The service sent an empty reply.");
      } else {
        bubble.dataset.state = "done";
      }
      if (conversation.id) {
        touchHistory(conversation.id, {});
      }
      setBusy(false);
    }

    function onEvent(name, data) {
      var payload = parseData(data);
      if (name === "conversation_created") {
        var id = payload && (payload.conversationId || payload.id);
        if (validId(id) && !failed) {
          var title = payload && typeof payload.title === "string" ? payload.title : "";
          setConversation(String(id), title || "New Chat");
          remember(String(id));
          touchHistory(String(id), { title: conversation.title });
        }
      } else if (name === "title") {
        // Generated after the first exchange; it may arrive after `done`.
        var titled = payload && typeof payload.title === "string" ? payload.title : "";
        var target = payload && payload.conversationId ? String(payload.conversationId) : asked;
        target = target || conversation.id;
        if (titled && validId(target)) {
          if (target === conversation.id) {
            setConversation(target, titled);
          }
          touchHistory(target, { title: titled });
        }
      } else if (name === "content") {
        var chunk = payload && typeof payload.text === "string" ? payload.text : "";
        if (chunk && !finished) {
          reply.append(chunk);
        }
      } else if (name === "content_replace") {
        if (payload && typeof payload.text === "string" && !finished) {
          reply.replace(payload.text);
        }
      } else if (name === "done") {
        if (!finished && !failed) {
          finish();
        }
      } else if (name === "error") {
        failed = true;
        reply.fail(serverMessage(payload) || "The service reported an error");
      }
    }

    var response = null;
    try {
      var body = { message: message };
      if (conversation.id) {
        body.conversationId = conversation.id;
      }
      response = await fetch(url(CHAT_PATH), {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        cache: "no-store",
      });
      if (!response.ok) {
        failed = true;
        var failure = await failureOf(response);
        reply.text.classList.add("failure");
        showFailure(reply.text, "Could not send: ", failure);
        bubble.dataset.state = "error"; // last: the words are in place when it says so
        restoreMessage();
        if (failure.state === "offline" || response.status >= 500) {
          checkConnection(); // the pill should say what the send just found
        }
        return;
      }
      var type = response.headers.get("Content-Type") || "";
      if (type.indexOf("text/event-stream") === -1 || !response.body) {
        failed = true;
        reply.fail("Unexpected reply (" + (type || "no content type") + ")");
        restoreMessage();
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
      if (!finished) {
        failed = true;
        reply.fail("Connection lost: " + err.message);
        if (!response) {
          restoreMessage(); // it never left the browser
        }
        checkConnection();
      }
      return;
    } finally {
      if (!finished) {
        setBusy(false);
      }
      if (document.activeElement === document.body) {
        $("message").focus();
      }
    }
    if (failed || finished) {
      return;
    }
    if (!reply.chunks && !reply.source) {
      reply.fail("The service sent an empty reply.");
    } else {
      reply.render();
      bubble.dataset.state = "incomplete";
      showNotice("The reply ended early; it may be incomplete.", "warning");
    }
  }

  /* ------------------------------------------------------------ start */

  function start() {
    $("composer").addEventListener("submit", function (event) {
      event.preventDefault();
      var input = $("message");
      var message = input.value.trim();
      if (!message || busy || $("send").disabled) {
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
    $("rename").addEventListener("click", startRename);
    $("rename-form").addEventListener("submit", rename);
    $("rename-cancel").addEventListener("click", cancelRename);
    $("title").addEventListener("keydown", function (event) {
      if (event.key === "Escape") {
        cancelRename();
      }
    });
    $("delete").addEventListener("click", askDelete);
    $("delete-yes").addEventListener("click", deleteConversation);
    $("delete-no").addEventListener("click", hideConfirm);
    $("new").addEventListener("click", newChat);
    $("toggle-history").addEventListener("click", toggleHistoryPanel);
    $("layout").addEventListener("click", function (event) {
      if (event.target === $("layout")) {
        closeHistoryPanel(); // the dimmed chat behind the open list
      }
    });
    $("recheck").addEventListener("click", checkConnection);
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && document.body.dataset.history === "open") {
        closeHistoryPanel();
      }
    });
    // A tab shown again, or a network back: look again (never on a timer, see docs/ui.md).
    document.addEventListener("visibilitychange", function () {
      var stale = Date.now() - connection.checkedAt > RECHECK_AFTER;
      if (document.visibilityState === "visible" && stale && !connection.reload) {
        checkConnection();
      }
    });
    window.addEventListener("online", checkConnection);
    document.body.dataset.base = BASE;
    historyStatus("Your conversations show here once Bee Flow is connected.");
    setConversation(null, "");
    updateComposer();
    checkConnection();
  }

  window.BeeFlowUI = {
    deriveBase: deriveBase,
    SseParser: SseParser,
    describeFailure: describeFailure,
    checkConnection: checkConnection,
    loadHistory: loadHistory,
    base: BASE,
  };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
