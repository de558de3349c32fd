/* Bee Flow connector UI: a small Markdown renderer for the service's replies.
 *
 * Safe by construction: it builds DOM nodes and sets text with textContent, so no string from
 * the reply is ever parsed as HTML (raw HTML in a reply shows as text). Links keep only
 * absolute http(s) and mailto targets and open in a new tab with rel="noopener noreferrer";
 * images are never loaded, they become links. Nesting depth and scan lengths are bounded so a
 * hostile reply cannot make rendering quadratic.
 *
 * Supported: paragraphs (a single newline is a line break, as in a chat), ATX headings,
 * emphasis (* _ ** __ ~~), code spans, fenced code blocks, block quotes, ordered and unordered
 * lists (nested by indentation), thematic breaks, GFM tables, links, <autolinks> and bare
 * http(s) URLs, backslash escapes.
 */
(function () {
  "use strict";

  var MAX_DEPTH = 8; // nested quotes/lists and nested emphasis
  var MAX_LINK_TEXT = 1000;
  var MAX_URL = 2048;
  var PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

  function el(tag, className) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    return node;
  }

  /* ------------------------------------------------------------ links */

  /* The href to use, or null: only absolute http(s) URLs and mailto addresses. The URL parser
   * strips tabs, newlines and control characters first, so "java\tscript:" is caught too. */
  function safeHref(raw) {
    var text = String(raw || "").trim();
    if (!text || text.length > MAX_URL) {
      return null;
    }
    if (/^mailto:/i.test(text)) {
      return /^mailto:[^\s@<>()]+@[^\s@<>()]+$/i.test(text) ? text : null;
    }
    var parsed;
    try {
      parsed = new URL(text);
    } catch (err) {
      return null;
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      return null;
    }
    return parsed.href;
  }

  function link(href, title) {
    var a = el("a");
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.title = title || href;
    return a;
  }

  /* ------------------------------------------------------------ inline */

  function isSpace(ch) {
    return ch === "" || ch === undefined || /\s/.test(ch);
  }

  function isWordChar(ch) {
    return !!ch && /[\p{L}\p{N}]/u.test(ch);
  }

  /* A bare URL at the start of `text` (GFM's autolink extension), minus trailing punctuation
   * and unbalanced closing parentheses. */
  function bareUrl(text) {
    var match = /^https?:\/\/[^\s<>"]+/i.exec(text);
    if (!match) {
      return "";
    }
    var url = match[0].slice(0, MAX_URL);
    for (;;) {
      var last = url.charAt(url.length - 1);
      if (/[.,;:!?'*_~]/.test(last)) {
        url = url.slice(0, -1);
      } else if (last === ")") {
        var opened = url.split("(").length - 1;
        var closed = url.split(")").length - 1;
        if (closed > opened) {
          url = url.slice(0, -1);
        } else {
          break;
        }
      } else {
        break;
      }
    }
    return url;
  }

  /* What the link scanner of one inline run knows, computed at most once per run so that no
   * "[" makes it rescan the text: the next "](" found, and each "(" 's matching ")" within a
   * whitespace-free stretch (a link target never contains whitespace). */
  function LinkScan(text) {
    this.text = text;
    this.close = -2; // -2: not searched yet; -1: no "](" after the last search
    this.space = -2; // the same for the next whitespace
    this.match = null;
  }

  LinkScan.prototype.nextSpace = function (from) {
    if (this.space === -1 || this.space >= from) {
      return this.space;
    }
    var found = /\s/g;
    found.lastIndex = from;
    this.space = found.exec(this.text) ? found.lastIndex - 1 : -1;
    return this.space;
  };

  LinkScan.prototype.nextClose = function (from) {
    if (this.close === -1 || this.close >= from) {
      return this.close;
    }
    this.close = this.text.indexOf("](", from);
    return this.close;
  };

  LinkScan.prototype.matching = function (open) {
    if (this.match === null) {
      var text = this.text;
      var match = new Int32Array(text.length).fill(-1);
      var stack = [];
      for (var i = 0; i < text.length; i++) {
        var code = text.charCodeAt(i);
        if (code === 40) {
          stack.push(i);
        } else if (code === 41) {
          if (stack.length) {
            match[stack.pop()] = i;
          }
        } else if (code <= 32) {
          stack.length = 0;
        }
      }
      this.match = match;
    }
    return this.match[open];
  };

  /* `[text](url "title")` starting at text[i] === "[" : {label, href, title, end} or null. */
  function linkAt(text, i, scan) {
    var close = scan.nextClose(i + 1);
    if (close === -1 || close - i - 1 > MAX_LINK_TEXT) {
      return null;
    }
    var label = text.slice(i + 1, close);
    if (label.split("[").length !== label.split("]").length) {
      return null; // "[a [b](c)": the inner bracket is the link
    }
    var open = close + 1;
    var shut = scan.matching(open);
    var href;
    var title = "";
    var k;
    if (shut !== -1) {
      // `(url)`, parentheses inside it balanced.
      if (shut - open - 1 > MAX_URL) {
        return null;
      }
      href = text.slice(open + 1, shut);
      k = shut + 1;
    } else {
      // `(url "title")`: the target runs to the first whitespace, a quoted title follows.
      var from = scan.nextSpace(open + 1);
      if (from === -1 || from - open - 1 > MAX_URL) {
        return null; // no title can follow, or the target is too long
      }
      var target = text.slice(open + 1, from);
      var rest = text.slice(from, from + 300);
      var titled = /^\s+"([^"]*)"\s*\)/.exec(rest) || /^\s+'([^']*)'\s*\)/.exec(rest);
      if (!titled) {
        return null;
      }
      href = target;
      title = titled[1];
      k = from + titled[0].length;
    }
    if (href.charAt(0) === "<" && href.charAt(href.length - 1) === ">") {
      href = href.slice(1, -1);
    }
    return { label: label, href: href, title: title, end: k };
  }

  /* Append the inline content of `text` to `parent`. */
  function inline(text, parent, depth) {
    var buffer = "";
    var noCloser = {}; // delimiters with no closer left: never scan for them again
    var scan = new LinkScan(text);
    var i = 0;

    function flush() {
      if (buffer) {
        parent.appendChild(document.createTextNode(buffer));
        buffer = "";
      }
    }

    function emphasis(delim, tag) {
      // Opener: not followed by space; for "_", not inside a word (snake_case stays text).
      var after = text.charAt(i + delim.length);
      if (isSpace(after) || noCloser[delim]) {
        return false;
      }
      if (delim.charAt(0) === "_" && isWordChar(text.charAt(i - 1))) {
        return false;
      }
      var from = i + delim.length + 1;
      for (;;) {
        var at = text.indexOf(delim, from);
        if (at === -1) {
          noCloser[delim] = true;
          return false;
        }
        var before = text.charAt(at - 1);
        var next = text.charAt(at + delim.length);
        var closes = !isSpace(before) && next !== delim.charAt(0);
        if (closes && delim.charAt(0) === "_" && isWordChar(next)) {
          closes = false;
        }
        if (closes) {
          flush();
          var node = el(tag);
          inline(text.slice(i + delim.length, at), node, depth + 1);
          parent.appendChild(node);
          i = at + delim.length;
          return true;
        }
        from = at + 1;
      }
    }

    while (i < text.length) {
      var ch = text.charAt(i);
      if (ch === "\\" && PUNCTUATION.indexOf(text.charAt(i + 1)) !== -1 && text.charAt(i + 1)) {
        buffer += text.charAt(i + 1);
        i += 2;
        continue;
      }
      if (ch === "\n") {
        flush();
        parent.appendChild(el("br"));
        i += 1;
        continue;
      }
      if (ch === "`") {
        var run = /^`+/.exec(text.slice(i, i + 64))[0];
        var key = "`" + run.length;
        var closeAt = noCloser[key] ? -1 : text.indexOf(run, i + run.length);
        while (closeAt !== -1 && text.charAt(closeAt + run.length) === "`") {
          closeAt = text.indexOf(run, closeAt + run.length + 1);
        }
        if (closeAt === -1) {
          noCloser[key] = true;
          buffer += run;
          i += run.length;
          continue;
        }
        var code = text.slice(i + run.length, closeAt).replace(/\n/g, " ");
        if (/^ .*[^ ].* $/.test(code)) {
          code = code.slice(1, -1);
        }
        flush();
        var span = el("code");
        span.textContent = code;
        parent.appendChild(span);
        i = closeAt + run.length;
        continue;
      }
      if (ch === "<" && /^<(?:https?:\/\/|mailto:)/i.test(text.substr(i, 10))) {
        var auto = /^<((?:https?:\/\/|mailto:)[^\s<>]+)>/i.exec(text.slice(i, i + MAX_URL + 2));
        var autoHref = auto ? safeHref(auto[1]) : null;
        if (autoHref) {
          flush();
          var autoLink = link(autoHref);
          autoLink.textContent = auto[1];
          parent.appendChild(autoLink);
          i += auto[0].length;
          continue;
        }
      }
      if (
        (ch === "h" || ch === "H") &&
        /^https?:\/\//i.test(text.substr(i, 8)) &&
        !isWordChar(text.charAt(i - 1))
      ) {
        var url = bareUrl(text.slice(i, i + MAX_URL));
        var bareHref = url ? safeHref(url) : null;
        if (bareHref) {
          flush();
          var bare = link(bareHref);
          bare.textContent = url;
          parent.appendChild(bare);
          i += url.length;
          continue;
        }
      }
      var image = ch === "!" && text.charAt(i + 1) === "[";
      if ((ch === "[" || image) && depth < MAX_DEPTH) {
        var start = image ? i + 1 : i;
        var found = linkAt(text, start, scan);
        if (found) {
          var href = safeHref(found.href);
          flush();
          if (href) {
            // Images are never loaded (no tracking pixels, no CSP surprises): a link instead.
            var a = link(href, found.title);
            if (image) {
              a.className = "image-link";
              a.textContent = found.label || "image";
            } else {
              inline(found.label, a, MAX_DEPTH); // no links or emphasis inside a link
            }
            if (!a.textContent) {
              a.textContent = href;
            }
            parent.appendChild(a);
          } else {
            // A target we do not follow (javascript:, relative, data:): the words stay.
            inline(found.label, parent, depth + 1);
          }
          i = found.end;
          continue;
        }
      }
      if (depth < MAX_DEPTH) {
        var two = text.slice(i, i + 2);
        if ((two === "**" || two === "__") && emphasis(two, "strong")) {
          continue;
        }
        if (two === "~~" && emphasis("~~", "del")) {
          continue;
        }
        if ((ch === "*" || ch === "_") && two !== "**" && two !== "__" && emphasis(ch, "em")) {
          continue;
        }
      }
      buffer += ch;
      i += 1;
    }
    flush();
  }

  /* ------------------------------------------------------------ blocks */

  var FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;
  var HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
  var RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
  var QUOTE = /^ {0,3}> ?/;
  var ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;
  var EMPTY_ITEM = /^( {0,12})([-*+]|\d{1,9}[.)])[ \t]*$/;
  var DELIMITER_ROW = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;

  function isBlank(line) {
    return /^\s*$/.test(line);
  }

  function cells(line) {
    var row = line.trim();
    if (row.charAt(0) === "|") {
      row = row.slice(1);
    }
    if (row.charAt(row.length - 1) === "|" && row.charAt(row.length - 2) !== "\\") {
      row = row.slice(0, -1);
    }
    var out = [];
    var current = "";
    for (var i = 0; i < row.length; i++) {
      var ch = row.charAt(i);
      if (ch === "\\" && row.charAt(i + 1) === "|") {
        current += "|";
        i += 1;
      } else if (ch === "|") {
        out.push(current.trim());
        current = "";
      } else {
        current += ch;
      }
    }
    out.push(current.trim());
    return out;
  }

  /* A GFM table starts here: a row with a pipe, then a delimiter row with as many cells. */
  function isTable(line, next) {
    return (
      line.indexOf("|") !== -1 &&
      next !== undefined &&
      DELIMITER_ROW.test(next) &&
      cells(line).length === cells(next).length
    );
  }

  function startsBlock(line, next) {
    return (
      FENCE.test(line) ||
      HEADING.test(line) ||
      RULE.test(line) ||
      QUOTE.test(line) ||
      ITEM.test(line) ||
      isTable(line, next)
    );
  }

  function table(lines, i, parent, depth) {
    var head = cells(lines[i]);
    var aligns = cells(lines[i + 1]).map(function (spec) {
      var left = spec.charAt(0) === ":";
      var right = spec.charAt(spec.length - 1) === ":";
      return left && right ? "center" : right ? "right" : left ? "left" : "";
    });
    var wrap = el("div", "table-wrap");
    var tableEl = el("table");
    var thead = el("thead");
    var headRow = el("tr");
    head.forEach(function (text, col) {
      var th = el("th", aligns[col] ? "align-" + aligns[col] : "");
      inline(text, th, depth + 1);
      headRow.appendChild(th);
    });
    thead.appendChild(headRow);
    tableEl.appendChild(thead);
    var tbody = el("tbody");
    var j = i + 2;
    while (j < lines.length && !isBlank(lines[j]) && lines[j].indexOf("|") !== -1) {
      var row = cells(lines[j]);
      var tr = el("tr");
      for (var col = 0; col < head.length; col++) {
        var td = el("td", aligns[col] ? "align-" + aligns[col] : "");
        inline(row[col] || "", td, depth + 1);
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
      j += 1;
    }
    if (tbody.firstChild) {
      tableEl.appendChild(tbody);
    }
    wrap.appendChild(tableEl);
    parent.appendChild(wrap);
    return j;
  }

  function list(lines, i, parent, depth) {
    var first = ITEM.exec(lines[i]) || EMPTY_ITEM.exec(lines[i]);
    var indent = first[1].length;
    var ordered = /\d/.test(first[2]);
    var listEl = el(ordered ? "ol" : "ul");
    if (ordered) {
      var start = parseInt(first[2], 10);
      if (start !== 1) {
        listEl.start = start;
      }
    }
    var items = [];
    var loose = false;
    var j = i;
    while (j < lines.length) {
      var match = ITEM.exec(lines[j]) || EMPTY_ITEM.exec(lines[j]);
      if (!match || match[1].length !== indent || /\d/.test(match[2]) !== ordered) {
        break;
      }
      var contentIndent = indent + match[2].length + 1;
      var body = [match[3] || ""];
      j += 1;
      var blankSeen = false;
      while (j < lines.length) {
        var line = lines[j];
        if (isBlank(line)) {
          blankSeen = true;
          body.push("");
          j += 1;
          continue;
        }
        var lead = /^ */.exec(line)[0].length;
        var sibling = ITEM.exec(line) || EMPTY_ITEM.exec(line);
        if (lead >= contentIndent || (lead > indent && sibling)) {
          body.push(line.slice(Math.min(lead, contentIndent)));
        } else if (!blankSeen && !sibling && !startsBlock(line, lines[j + 1])) {
          body.push(line.trim()); // a lazy continuation of the item's paragraph
        } else {
          break;
        }
        blankSeen = false;
        j += 1;
      }
      while (body.length && body[body.length - 1] === "") {
        body.pop();
        if (j < lines.length && (ITEM.exec(lines[j]) || EMPTY_ITEM.exec(lines[j]))) {
          loose = true;
        }
      }
      if (body.indexOf("") !== -1) {
        loose = true;
      }
      items.push(body);
    }
    items.forEach(function (body) {
      var li = el("li");
      blocks(body, li, depth + 1, !loose);
      listEl.appendChild(li);
    });
    parent.appendChild(listEl);
    return j;
  }

  /* Render `lines` as blocks into `parent`. `tight`: a single paragraph is written inline
   * (a tight list item). */
  function blocks(lines, parent, depth, tight) {
    if (depth > MAX_DEPTH) {
      var pre = el("p");
      pre.textContent = lines.join("\n");
      parent.appendChild(pre);
      return;
    }
    var i = 0;
    while (i < lines.length) {
      var line = lines[i];
      if (isBlank(line)) {
        i += 1;
        continue;
      }
      var fence = FENCE.exec(line);
      if (fence) {
        var marker = fence[1];
        var code = [];
        i += 1;
        while (i < lines.length) {
          var closing = new RegExp("^ {0,3}" + marker.charAt(0) + "{" + marker.length + ",}\\s*$");
          if (closing.test(lines[i])) {
            i += 1;
            break;
          }
          code.push(lines[i]);
          i += 1;
        }
        var preEl = el("pre");
        var codeEl = el("code");
        if (fence[2]) {
          codeEl.dataset.lang = fence[2].slice(0, 40);
          codeEl.className = "lang-" + fence[2].replace(/[^A-Za-z0-9_-]/g, "").slice(0, 40);
        }
        codeEl.textContent = code.join("\n");
        preEl.appendChild(codeEl);
        parent.appendChild(preEl);
        continue;
      }
      var heading = HEADING.exec(line);
      if (heading) {
        // Inside a reply: # is h3 (the page has h1, the conversation title is h2).
        var h = el("h" + Math.min(6, heading[1].length + 2));
        inline(heading[2] || "", h, depth);
        parent.appendChild(h);
        i += 1;
        continue;
      }
      if (RULE.test(line)) {
        parent.appendChild(el("hr"));
        i += 1;
        continue;
      }
      if (QUOTE.test(line)) {
        var quoted = [];
        while (i < lines.length && !isBlank(lines[i])) {
          if (QUOTE.test(lines[i])) {
            quoted.push(lines[i].replace(QUOTE, ""));
          } else if (startsBlock(lines[i], lines[i + 1])) {
            break;
          } else {
            quoted.push(lines[i]);
          }
          i += 1;
        }
        var quote = el("blockquote");
        blocks(quoted, quote, depth + 1, false);
        parent.appendChild(quote);
        continue;
      }
      if (ITEM.test(line) || (EMPTY_ITEM.test(line) && !RULE.test(line))) {
        i = list(lines, i, parent, depth);
        continue;
      }
      if (isTable(line, lines[i + 1])) {
        i = table(lines, i, parent, depth);
        continue;
      }
      var paragraph = [line.replace(/^ {1,3}/, "")];
      i += 1;
      while (i < lines.length && !isBlank(lines[i]) && !startsBlock(lines[i], lines[i + 1])) {
        paragraph.push(lines[i].replace(/^ +/, ""));
        i += 1;
      }
      var text = paragraph.join("\n").replace(/[ \t]+$/, "");
      if (tight) {
        inline(text, parent, depth);
      } else {
        var p = el("p");
        inline(text, p, depth);
        parent.appendChild(p);
      }
    }
  }

  /* The reply `source` as a DocumentFragment of safe elements. */
  function render(source) {
    var fragment = document.createDocumentFragment();
    var text = String(source || "").replace(/\r\n?/g, "\n").replace(/\t/g, "    ");
    blocks(text.split("\n"), fragment, 0, false);
    return fragment;
  }

  window.BeeFlowMarkdown = { render: render, safeHref: safeHref };
})();
