// The live view of a run in progress: its journal's events over server-sent events.
// Plain JS, no library. Output lines arrive as HTML the server rendered (escaped, colours).
(function () {
  "use strict";
  var runId = document.currentScript.dataset.run;
  var rows = document.getElementById("live-steps");
  var log = document.getElementById("live-log");
  var status = document.getElementById("run-status");
  var steps = {};

  function row(name) {
    if (!steps[name]) {
      var tr = document.createElement("tr");
      tr.dataset.step = name;
      tr.innerHTML = "<td></td><td class='state'>queued</td><td class='last'></td>";
      tr.firstChild.textContent = name;
      rows.appendChild(tr);
      steps[name] = tr;
    }
    return steps[name];
  }
  function state(name, text) {
    var cell = row(name).querySelector(".state");
    cell.textContent = text;
    cell.className = "state state-" + text.split(" ")[0];
  }
  var source = new EventSource("/api/runs/" + encodeURIComponent(runId) + "/events");
  source.onmessage = function (msg) {
    var e = JSON.parse(msg.data);
    switch (e.event) {
      case "parse": e.planned.forEach(function (n) { row(n); }); break;
      case "cache": if (!e.hit) { state(e.step, "queued"); } break;
      case "run": state(e.step, "running"); break;
      case "output":
        var line = document.createElement("div");
        line.className = "line";
        line.dataset.step = e.step;
        line.innerHTML = "<span class='dim'></span> " + e.html;
        line.firstChild.textContent = "[" + e.step + "]";
        log.appendChild(line);
        row(e.step).querySelector(".last").innerHTML = e.html;
        break;
      case "pass": state(e.step, e.cached ? "cached" : "passed"); break;
      case "fail": state(e.step, e.allowed ? "allowed" : "failed"); break;
      case "skip": state(e.step, "skipped"); break;
      case "retry": state(e.step, "running (attempt " + e.attempt + ")"); break;
      case "done":
      case "end":
        source.close();
        status.textContent = "finished";
        status.className = "badge";
        // the record is in the store now: show the full run page
        setTimeout(function () { window.location.reload(); }, 1500);
        break;
    }
  };
})();
