"use strict";
(function () {
  // Everything shown comes from the JSON blob and is written with textContent, never as HTML.
  var data = JSON.parse(document.getElementById("dc-data").textContent);
  var img = document.getElementById("dc-map");
  var capWord = document.getElementById("dc-caption-word");
  var capDetail = document.getElementById("dc-caption-detail");
  var rawBox = document.getElementById("dc-raw");
  var slider = document.getElementById("dc-slider");
  var where = document.getElementById("dc-where");
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button.chip[data-row]"));
  var stepChips = Array.prototype.slice.call(document.querySelectorAll("#dc-step-answer .chip"));
  var current = { kind: "token", k: 0 };
  var timer = null;

  function fmt(x) {
    if (x === null || x === undefined) { return "—"; }
    if (typeof x === "number") { return Number.isInteger(x) ? String(x) : x.toPrecision(4); }
    return String(x);
  }

  function useRaw() { return rawBox !== null && rawBox.checked; }

  function stepOf(index) {
    for (var k = 0; k < data.steps.length; k++) {
      if (data.steps[k].committed.indexOf(index) >= 0) { return k; }
    }
    return -1;
  }

  function paintSteps(k) {
    var done = {};
    for (var j = 0; j < k; j++) { data.steps[j].committed.forEach(function (p) { done[p] = true; }); }
    var now = {};
    if (k >= 0) { data.steps[k].committed.forEach(function (p) { now[p] = true; }); }
    stepChips.forEach(function (chip) {
      var p = Number(chip.getAttribute("data-index"));
      chip.classList.toggle("new", now[p] === true);
      chip.classList.toggle("masked", !now[p] && !done[p]);
    });
    if (slider !== null && k >= 0) {
      slider.value = String(k);
      where.textContent = "step " + data.steps[k].step + " (" + (k + 1) + " of " + data.steps.length + ")";
    }
  }

  function showToken(row) {
    var t = data.tokens[row];
    current = { kind: "token", k: row };
    img.src = useRaw() && t.raw_uri ? t.raw_uri : t.uri;
    img.alt = "map of the word " + t.word;
    capWord.textContent = t.word;
    var parts = ["answer position " + t.index,
                 t.step === null ? "given answer (not denoised)" : "committed at step " + fmt(t.step),
                 "score " + fmt(t.score)];
    if (t.degenerate) { parts.push("no evidence at the hooked layer"); }
    Object.keys(t.metrics || {}).forEach(function (name) { parts.push(name + " " + fmt(t.metrics[name])); });
    if (useRaw() && t.raw_uri) { parts.push("raw map"); }
    capDetail.textContent = parts.join(" · ");
    buttons.forEach(function (b) { b.setAttribute("aria-pressed", String(Number(b.getAttribute("data-row")) === row)); });
    paintSteps(stepOf(t.index));
  }

  function showStep(k) {
    var s = data.steps[k];
    current = { kind: "step", k: k };
    var uri = useRaw() && s.raw_uri ? s.raw_uri : s.uri;
    img.src = uri || data.image;
    var words = s.committed.map(function (p) { return data.words[p]; });
    img.alt = "map of the words committed at step " + s.step;
    capWord.textContent = words.join(" ");
    capDetail.textContent = "committed at step " + s.step + " (" + (k + 1) + " of " + data.steps.length + ")" +
      (s.uri ? (s.committed.length > 1 ? " · maximum of their maps" : "") : " · not explained: image only");
    buttons.forEach(function (b) {
      var row = Number(b.getAttribute("data-row"));
      b.setAttribute("aria-pressed", String(s.committed.indexOf(data.tokens[row].index) >= 0));
    });
    paintSteps(k);
  }

  function refresh() { if (current.kind === "token") { showToken(current.k); } else { showStep(current.k); } }

  function stop() { if (timer !== null) { clearInterval(timer); timer = null; document.getElementById("dc-play").textContent = "Play"; } }

  buttons.forEach(function (b) {
    b.addEventListener("click", function () { stop(); showToken(Number(b.getAttribute("data-row"))); });
  });
  if (rawBox !== null) { rawBox.addEventListener("change", refresh); }
  if (slider !== null) {
    slider.addEventListener("input", function () { stop(); showStep(Number(slider.value)); });
    document.getElementById("dc-prev").addEventListener("click", function () {
      stop(); showStep(Math.max(0, Number(slider.value) - 1));
    });
    document.getElementById("dc-next").addEventListener("click", function () {
      stop(); showStep(Math.min(data.steps.length - 1, Number(slider.value) + 1));
    });
    document.getElementById("dc-play").addEventListener("click", function (ev) {
      if (timer !== null) { stop(); return; }
      ev.target.textContent = "Pause";
      var k = current.kind === "step" && current.k < data.steps.length - 1 ? current.k + 1 : 0;
      showStep(k);
      timer = setInterval(function () {
        if (current.k >= data.steps.length - 1) { stop(); return; }
        showStep(current.k + 1);
      }, 900);
    });
  }
  if (data.first !== null) { showToken(data.first); }  // the first content word, not "a"
  document.body.setAttribute("data-ready", "true");
})();
