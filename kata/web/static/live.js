// The live view of a run in progress: its journal's events over server-sent events.
// Plain JS, no library. Output lines arrive as HTML the server rendered (escaped, colours);
// the DAG arrives with the `parse` event as SVG the server drew (draw.dag_svg) and its
// nodes are recoloured here; the timeline is drawn here from the events' times and its
// running bars grow every second.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var runId = document.currentScript.dataset.run;
  var rows = document.getElementById("live-steps");
  var log = document.getElementById("live-log");
  var status = document.getElementById("run-status");
  var dag = document.getElementById("live-dag");
  var timeline = document.getElementById("live-timeline");
  var steps = {};
  var order = [];       // timeline rows, first seen first
  var times = {};       // step -> {waiting, running, ended, hit, status}
  var t0 = null, lastEvent = null, lastArrival = null, over = false;

  function row(name) {
    if (!steps[name]) {
      var tr = document.createElement("tr");
      tr.dataset.step = name;
      tr.innerHTML = "<td></td><td class='state'>queued</td><td class='last'></td>";
      tr.firstChild.textContent = name;
      rows.appendChild(tr);
      steps[name] = tr;
      times[name] = times[name] || {};
      order.push(name);
    }
    return steps[name];
  }
  function node(name) {
    var found = null;
    dag.querySelectorAll("g.node").forEach(function (g) {
      if (g.dataset.step === name) { found = g; }
    });
    return found;
  }
  // a step's state as the DAG shows it: node classes and its detail line
  function paint(name) {
    var g = node(name), t = times[name];
    if (!g || !t || !t.status) { return; }
    var s = t.status;
    g.setAttribute("class", "node status-" + (s === "cached" ? "passed" : s) +
                   (s === "cached" ? " hit" : ""));
    var detail = g.querySelector(".detail");
    if (detail) { detail.textContent = s; }
  }
  function state(name, text, at) {
    var cell = row(name).querySelector(".state");
    cell.textContent = text;
    cell.className = "state state-" + text.split(" ")[0];
    var t = times[name], word = text.split(" ")[0];
    t.status = word;
    if (word === "queued" && t.waiting == null) { t.waiting = at; }
    if (word === "running" && t.running == null) { t.running = at; }
    if (word === "cached") { t.hit = true; t.ended = at; }
    if (["passed", "failed", "allowed", "skipped"].indexOf(word) >= 0) { t.ended = at; }
    paint(name);
    draw();
  }
  function el(tag, attrs, parent) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    parent.appendChild(e);
    return e;
  }
  function fmt(s) {
    return s < 60 ? s.toFixed(1) + "s" : Math.floor(s / 60) + "m" + ("0" + Math.floor(s % 60)).slice(-2) + "s";
  }
  // the timeline: one row per step with a time, on an axis from the first event to now
  function draw() {
    if (t0 === null) { return; }
    var now = over ? lastEvent : lastEvent + (Date.now() - lastArrival) / 1000;
    var shown = order.filter(function (n) {
      var t = times[n];
      return t.waiting != null || t.running != null || t.hit;
    });
    var labelW = 230, width = 900, rowH = 24, pad = 16, plot = width - labelW - pad;
    var height = pad + 24 + shown.length * rowH + 10, span = Math.max(now - t0, 0.001);
    var x = function (t) { return labelW + (t - t0) / span * plot; };
    while (timeline.firstChild) { timeline.removeChild(timeline.firstChild); }
    timeline.setAttribute("height", height);
    timeline.setAttribute("viewBox", "0 0 " + width + " " + height);
    for (var k = 0; k < 6; k++) {
      var tk = t0 + span * k / 5;
      el("line", {"class": "tick", x1: x(tk), y1: pad, x2: x(tk), y2: height - 6}, timeline);
      el("text", {"class": "tick-label", x: x(tk), y: pad - 3,
                  "text-anchor": k === 5 ? "end" : "start"}, timeline).textContent = fmt(tk - t0);
    }
    var y = pad + 12;
    shown.forEach(function (name) {
      var t = times[name];
      var g = el("g", {"class": "row", "data-step": name}, timeline);
      el("text", {"class": "row-label", x: 4, y: y + 15}, g).textContent =
        name.length > 30 ? name.slice(0, 29) + "\u2026" : name;
      if (t.hit) {
        var cx = x(t.ended);
        el("path", {"class": "bar phase-hit", d: "M" + cx + "," + (y + 4) + " l7,8 l-7,8 l-7,-8 z"}, g);
      } else {
        var end = t.ended != null ? t.ended : now;
        if (t.waiting != null) {
          var stop = t.running != null ? t.running : end;
          el("rect", {"class": "bar phase-queued", "data-phase": "queued", x: x(t.waiting),
                      y: y + 4, width: Math.max(x(stop) - x(t.waiting), 0), height: rowH - 8}, g);
        }
        if (t.running != null) {
          el("rect", {"class": "bar phase-running status-" + t.status, "data-phase": "running",
                      x: x(t.running), y: y + 4, width: Math.max(x(end) - x(t.running), 1.5),
                      height: rowH - 8}, g);
        }
      }
      y += rowH;
    });
  }
  setInterval(function () { if (!over) { draw(); } }, 1000);

  var source = new EventSource("/api/runs/" + encodeURIComponent(runId) + "/events");
  source.onmessage = function (msg) {
    var e = JSON.parse(msg.data);
    var at = e.time ? Date.parse(e.time) / 1000 : (lastEvent || Date.now() / 1000);
    if (t0 === null) { t0 = at; }
    lastEvent = Math.max(lastEvent || at, at);
    lastArrival = Date.now();
    switch (e.event) {
      case "parse":
        e.planned.forEach(function (n) { row(n); });
        if (e.dag) {
          dag.innerHTML = e.dag;
          order.forEach(paint);
        }
        break;
      case "cache": state(e.step, e.hit ? "cached" : "queued", at); break;
      case "run": state(e.step, "running", at); break;
      case "output":
        var line = document.createElement("div");
        line.className = "line";
        line.dataset.step = e.step;
        line.innerHTML = "<span class='dim'></span> " + e.html;
        line.firstChild.textContent = "[" + e.step + "]";
        log.appendChild(line);
        row(e.step).querySelector(".last").innerHTML = e.html;
        break;
      case "pass": state(e.step, e.cached ? "cached" : "passed", at); break;
      case "fail": state(e.step, e.allowed ? "allowed" : "failed", at); break;
      case "skip": state(e.step, "skipped", at); break;
      case "retry": state(e.step, "running (attempt " + e.attempt + ")", at); break;
      case "done":
      case "end":
        source.close();
        over = true;
        draw();
        status.textContent = "finished";
        status.className = "badge";
        // the record is in the store now: show the full run page
        setTimeout(function () { window.location.reload(); }, 1500);
        break;
    }
  };
})();
