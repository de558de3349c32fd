/* Bee Flow connector UI: reading what the connector and the Bee Flow service answer.
 *
 * No DOM here: failure descriptions (the sentences a person sees for each status and code), the
 * SSE parser for the chat stream, and the shapes of the service's conversations. Used by
 * beeflow-ui.js through window.BeeFlowService.
 */
(function () {
  "use strict";

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

  /* A stored message's content as text: a string, or the provider's blocks
   * ({type: "text", text}) joined, as the service's own UI reads them (messageShape.js). */
  function contentText(content) {
    if (typeof content === "string") {
      return content;
    }
    if (Array.isArray(content)) {
      return content
        .filter(function (block) {
          return block && block.type === "text" && typeof block.text === "string";
        })
        .map(function (block) {
          return block.text;
        })
        .join("\n\n");
    }
    if (content && typeof content === "object" && typeof content.text === "string") {
      return content.text;
    }
    return "";
  }

  /* A conversation id we can put in a URL path: one segment, never "." or "..". */
  function validId(id) {
    if (typeof id !== "string" && typeof id !== "number") {
      return false;
    }
    var text = String(id);
    return text.length > 0 && text.length <= 200 && text !== "." && text !== "..";
  }

  /* One row of the service's list (listDirectConversations: id, title, updated_at, pinned...),
   * or null for anything that is not a conversation. */
  function summary(row) {
    if (!row || typeof row !== "object" || !validId(row.id)) {
      return null;
    }
    return {
      id: String(row.id),
      title: typeof row.title === "string" ? row.title : "",
      updated: typeof row.updated_at === "string" ? row.updated_at : "",
      pinned: row.pinned === true,
    };
  }

  window.BeeFlowService = {
    readJson: readJson,
    serverMessage: serverMessage,
    SESSION_TEXT: SESSION_TEXT,
    describeFailure: describeFailure,
    SseParser: SseParser,
    parseData: parseData,
    contentText: contentText,
    validId: validId,
    summary: summary,
  };
})();
